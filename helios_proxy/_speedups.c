/* The compiled helper of the fast path (issue 33): the byte walks of the hot path in C (an answer's
 * headers: walk_answer, whole_answer; a batch's: unnamed_batch), the screen of a simple Query (query_key),
 * an answer's last CommandComplete tag (last_tag: analytics and on_query_complete read it per
 * answer), the whole messages of a chunk the generic walk is given (scan), the loop callbacks'
 * reads and writes of non-blocking sockets (read, write), the protocol's NUL-terminated strings
 * (read_cstr: a named statement's execution reads three), and a server connection's read
 * watcher's callback (follow).
 *
 * Optional: `pip install -e .` builds it where a C compiler is found and goes on without it where
 * none is (setup.py). helios_proxy/speedups.py holds the pure-Python reference of each function,
 * chooses this module when it imports, and HELIOS_PURE_PYTHON=1 chooses the reference instead.
 * tests/unit/test_speedups.py runs both on the same inputs. Each function here does exactly what
 * its reference does, no more: the protocol's rules stay in Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <unistd.h>

#define READ_SIZE 65536  /* speedups.READ_SIZE */
static char scratch[READ_SIZE];  /* read()'s: the GIL is held throughout, no other thread uses it */

/* A file descriptor argument; -1 with an exception set. */
static int
descriptor(PyObject *arg)
{
    long fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred())
        return -1;
    if (fd < -1 || fd > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "a file descriptor out of range");
        return -1;
    }
    if (fd == -1) {  /* (a closed socket's fileno()) */
        errno = EBADF;
        PyErr_SetFromErrno(PyExc_OSError);
    }
    return (int)fd;
}

/* Whether a system call that failed with errno should be made again (EINTR, no signal handler
 * raised); else NULL's exception is set. */
static int
again(int error)
{
    if (error == EINTR)
        return PyErr_CheckSignals() == 0;
    errno = error;
    PyErr_SetFromErrno(PyExc_OSError);
    return 0;
}

static inline Py_ssize_t length_at(const unsigned char *p)
{
    return ((Py_ssize_t)p[0] << 24) | ((Py_ssize_t)p[1] << 16) | ((Py_ssize_t)p[2] << 8) | (Py_ssize_t)p[3];
}

static const unsigned char READY_HEAD[5] = {'Z', 0, 0, 0, 5};  /* a ReadyForQuery's type and length */
static const unsigned char NO_TABLE[1];  /* table_of(): the entry has none (not a usual one) */

/* The stops table of an entry (stops: {entry: 256 bytes}); NO_TABLE; NULL with an exception set. */
static const unsigned char *
table_of(PyObject *entries, Py_ssize_t k, PyObject *stops)
{
    PyObject *entry = PySequence_GetItem(entries, k);
    if (entry == NULL)
        return NULL;
    PyObject *table = PyDict_GetItemWithError(stops, entry);  /* (borrowed) */
    Py_DECREF(entry);
    if (table == NULL)
        return PyErr_Occurred() ? NULL : NO_TABLE;
    if (!PyBytes_CheckExact(table) || PyBytes_GET_SIZE(table) != 256) {
        PyErr_SetString(PyExc_TypeError, "walk_answer: a stops table is 256 bytes");
        return NULL;
    }
    return (const unsigned char *)PyBytes_AS_STRING(table);
}

/* The walk of walk_answer() on data (n bytes) from pos: the index of the entry whose answer ends at
 * tail, or -1; -2 with an exception set. */
static Py_ssize_t
walk(const unsigned char *data, Py_ssize_t n, Py_ssize_t pos, Py_ssize_t tail, PyObject *entries, Py_ssize_t k,
     Py_ssize_t last, PyObject *stops, const unsigned char *middle)
{
    const unsigned char *table = table_of(entries, k, stops);
    if (table == NULL)
        return -2;
    if (table == NO_TABLE)
        return -1;
    while (pos < tail) {
        if (pos < 0 || pos >= n)
            goto beyond;
        unsigned char mtype = data[pos];
        if (table[mtype]) {
            if (!middle[mtype] || k == last)
                return -1;
            if ((table = table_of(entries, ++k, stops)) == NULL)
                return -2;
            if (table == NO_TABLE)
                return -1;
        }
        if (pos > n - 5)
            goto beyond;
        pos += 1 + length_at(data + pos + 1);
    }
    return pos == tail ? k : -1;
beyond:  /* (a message header it must read is beyond data) */
    PyErr_SetString(PyExc_ValueError, "walk_answer: a message header beyond the data");
    return -2;
}

/* walk_answer(data, pos, tail, entries, k, stops, middle) -> int: see speedups.py_walk_answer. */
static PyObject *
walk_answer(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7 || !PyBytes_CheckExact(args[0]) || !PyDict_CheckExact(args[5]) || !PyBytes_CheckExact(args[6])
            || PyBytes_GET_SIZE(args[6]) != 256) {
        PyErr_SetString(PyExc_TypeError,
                        "walk_answer(data: bytes, pos, tail, entries, k, stops: dict, middle: 256 bytes)");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]), tail, k, last;
    if (pos == -1 && PyErr_Occurred())
        return NULL;
    if ((tail = PyLong_AsSsize_t(args[2])) == -1 && PyErr_Occurred())
        return NULL;
    if ((k = PyLong_AsSsize_t(args[4])) == -1 && PyErr_Occurred())
        return NULL;
    if ((last = PySequence_Size(args[3]) - 1) < -1)
        return NULL;
    Py_ssize_t found = walk((const unsigned char *)PyBytes_AS_STRING(args[0]), PyBytes_GET_SIZE(args[0]), pos, tail,
                            args[3], k, last, args[5], (const unsigned char *)PyBytes_AS_STRING(args[6]));
    return found == -2 ? NULL : PyLong_FromSsize_t(found);
}

/* whole_answer(data, entries, stops, middle, ended) -> bytes or None: see speedups.py_whole_answer. */
static PyObject *
whole_answer(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyBytes_CheckExact(args[0]) || !PyDict_CheckExact(args[2]) || !PyBytes_CheckExact(args[3])
            || PyBytes_GET_SIZE(args[3]) != 256 || !PyAnySet_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError,
                        "whole_answer(data: bytes, entries, stops: dict, middle: 256 bytes, ended: a set)");
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]), tail = n - 6, last;
    if (tail < 0 || memcmp(data + tail, READY_HEAD, 5) != 0)
        Py_RETURN_NONE;
    if ((last = PySequence_Size(args[1]) - 1) < -1)
        return NULL;
    if (last < 0)
        Py_RETURN_NONE;
    Py_ssize_t found = walk(data, n, 0, tail, args[1], 0, last, args[2], (const unsigned char *)PyBytes_AS_STRING(args[3]));
    if (found == -2)
        return NULL;
    if (found != last)
        Py_RETURN_NONE;
    PyObject *entry = PySequence_GetItem(args[1], last);
    if (entry == NULL)
        return NULL;
    int ends = PySet_Contains(args[4], entry);
    Py_DECREF(entry);
    if (ends < 0)
        return NULL;
    if (!ends)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)data + n - 1, 1);  /* (its status: a cached one-byte object) */
}

/* scan(data, wanted, max_size) -> (messages, pos): see speedups.py_scan. */
static PyObject *
scan(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyAnySet_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "scan(data, wanted: a set, max_size)");
        return NULL;
    }
    Py_ssize_t max_size = PyLong_AsSsize_t(args[2]);
    if (max_size == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *data = (const unsigned char *)view.buf;
    Py_ssize_t n = view.len, pos = 0;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        goto error;
    while (n - pos >= 5) {
        unsigned char mtype = data[pos];
        Py_ssize_t length = (int32_t)(uint32_t)length_at(data + pos + 1);  /* (signed, as the reference's) */
        if (length < 4 || length > max_size || length > n - pos - 1)
            break;
        Py_ssize_t end = pos + 1 + length;
        PyObject *type = PyLong_FromLong(mtype);  /* (a small int: no object made) */
        if (type == NULL)
            goto error;
        int wanted = PySet_Contains(args[1], type);
        if (wanted <= 0) {
            Py_DECREF(type);
            if (wanted < 0)
                goto error;
        } else {
            PyObject *body = PyBytes_FromStringAndSize((const char *)data + pos + 5, length - 4);
            PyObject *at = body == NULL ? NULL : PyLong_FromSsize_t(end);
            PyObject *item = at == NULL ? NULL : PyTuple_New(3);
            if (item == NULL) {
                Py_DECREF(type);
                Py_XDECREF(body);
                Py_XDECREF(at);
                goto error;
            }
            PyTuple_SET_ITEM(item, 0, type);
            PyTuple_SET_ITEM(item, 1, body);
            PyTuple_SET_ITEM(item, 2, at);
            int failed = PyList_Append(out, item);
            Py_DECREF(item);
            if (failed)
                goto error;
        }
        pos = end;
    }
    PyBuffer_Release(&view);
    PyObject *stop = PyLong_FromSsize_t(pos);
    if (stop == NULL) {
        Py_DECREF(out);
        return NULL;
    }
    PyObject *result = PyTuple_New(2);
    if (result == NULL) {
        Py_DECREF(out);
        Py_DECREF(stop);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, out);
    PyTuple_SET_ITEM(result, 1, stop);
    return result;
error:
    PyBuffer_Release(&view);
    Py_XDECREF(out);
    return NULL;
}

/* last_tag(data, stop) -> bytes or None: see speedups.py_last_tag. */
static PyObject *
last_tag(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "last_tag(data: bytes, stop)");
        return NULL;
    }
    Py_ssize_t stop = PyLong_AsSsize_t(args[1]);
    if (stop == -1 && PyErr_Occurred())
        return NULL;
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]), pos = 0, tag = -1;
    while (pos < stop) {
        if (pos > n - 5) {
            PyErr_SetString(PyExc_ValueError, "last_tag: a message header beyond the data");
            return NULL;
        }
        if (data[pos] == 'C')
            tag = pos;
        pos += 1 + length_at(data + pos + 1);
    }
    if (tag < 0)
        Py_RETURN_NONE;
    const unsigned char *nul = tag + 5 < n ? memchr(data + tag + 5, 0, (size_t)(n - tag - 5)) : NULL;
    if (nul == NULL) {
        PyErr_SetString(PyExc_ValueError, "last_tag: a tag without its NUL");
        return NULL;
    }
    return PyBytes_FromStringAndSize((const char *)data + tag + 5, nul - data - tag - 4);
}

/* The keys query_key and key_of made lately, by a hash of a few of their bytes: a text seen again
 * gets the same object back, its hash kept (the fast path's set lookups hash it once, not per
 * request, and no object is made). A slot another text takes is simply replaced. */
#define KEPT_KEYS 256
#define KEPT_LONGEST 1024
static PyObject *kept_keys[KEPT_KEYS];

static inline uint64_t word_at(const unsigned char *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
    return w;
}

/* The bytes out[:n] (16 <= n <= KEPT_LONGEST) as a kept key: the one kept for an equal key, or a
 * new one kept in its place (a new reference; NULL with an exception set). */
static PyObject *
kept(const unsigned char *out, Py_ssize_t n)
{
    /* (its length and three words: the text's start, middle and end) */
    uint64_t h = (word_at(out + 5) * 0x9E3779B97F4A7C15ULL) ^ (word_at(out + n / 2 - 4) * 0xC2B2AE3D27D4EB4FULL)
                 ^ (word_at(out + n - 9) * 0x165667B19E3779F9ULL) ^ (uint64_t)n;
    PyObject **slot = &kept_keys[(h ^ (h >> 29) ^ (h >> 47)) & (KEPT_KEYS - 1)];
    PyObject *old = *slot;
    if (old != NULL && PyBytes_GET_SIZE(old) == n && memcmp(PyBytes_AS_STRING(old), out, (size_t)n) == 0) {
        Py_INCREF(old);
        return old;
    }
    PyObject *key = PyBytes_FromStringAndSize((const char *)out, n);
    if (key == NULL)
        return NULL;
    Py_INCREF(key);
    *slot = key;
    Py_XDECREF(old);
    return key;
}

/* The last table query_key found to map digits to '0' and every other byte to itself (the
 * fast path's, sqlshape.DIGITS_TO_0: one object), held: with it, the translation is a loop the
 * compiler makes vector code of, not a byte-by-byte table lookup. */
static PyObject *digits_table;

static int
is_digits_table(PyObject *table)
{
    if (table == digits_table)
        return 1;
    const unsigned char *t = (const unsigned char *)PyBytes_AS_STRING(table);
    for (int c = 0; c < 256; c++)
        if (t[c] != ((c >= '1' && c <= '9') ? '0' : c))
            return 0;
    Py_INCREF(table);
    Py_XSETREF(digits_table, table);
    return 1;
}

/* query_key(data, table) -> bytes or None: see speedups.query_key. */
static PyObject *
query_key(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_CheckExact(args[0]) || !PyBytes_CheckExact(args[1])
            || PyBytes_GET_SIZE(args[1]) != 256) {
        PyErr_SetString(PyExc_TypeError, "query_key(data: bytes, table: 256 bytes)");
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    const unsigned char *table = (const unsigned char *)PyBytes_AS_STRING(args[1]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    if (n < 6 || length_at(data + 1) != n - 1 || data[n - 1] != 0
            || memchr(data + 5, 0, (size_t)(n - 6)) != NULL)
        Py_RETURN_NONE;
    unsigned char buf[KEPT_LONGEST], *out = buf;
    PyObject *key = NULL;  /* (a text too short or too long to keep: a bytes object of its own) */
    if (n < 16 || n > KEPT_LONGEST) {
        if ((key = PyBytes_FromStringAndSize(NULL, n)) == NULL)
            return NULL;
        out = (unsigned char *)PyBytes_AS_STRING(key);
    }
    if (is_digits_table(args[1])) {
        for (Py_ssize_t i = 0; i < n; i++) {
            unsigned char c = data[i];
            out[i] = (unsigned char)(c - '1') < 9 ? '0' : c;
        }
    } else {
        for (Py_ssize_t i = 0; i < n; i++)
            out[i] = table[data[i]];
    }
    return key != NULL ? key : kept(buf, n);
}

/* key_of(data, start, end) -> bytes: see speedups.py_key_of. */
static PyObject *
key_of(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "key_of(data: bytes, start: int, end: int)");
        return NULL;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t start = PyLong_AsSsize_t(args[1]), end = PyLong_AsSsize_t(args[2]);
    if ((start == -1 || end == -1) && PyErr_Occurred())
        return NULL;
    if (start < 0 || end > n || end < start) {
        PyErr_SetString(PyExc_ValueError, "key_of: 0 <= start <= end <= len(data)");
        return NULL;
    }
    const unsigned char *from = (const unsigned char *)PyBytes_AS_STRING(args[0]) + start;
    if (end - start < 16 || end - start > KEPT_LONGEST)
        return PyBytes_FromStringAndSize((const char *)from, end - start);
    return kept(from, end - start);
}

/* ([starts], shape) of data's whole messages: see speedups.py_messages; Py_None (a new reference)
 * when data is not whole messages; NULL with an exception set. */
static PyObject *
frame(PyObject *arg)
{
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(arg);
    Py_ssize_t n = PyBytes_GET_SIZE(arg), pos = 0, count = 0;
    while (pos < n) {  /* whole messages only: count them */
        if (n - pos < 5)
            Py_RETURN_NONE;
        Py_ssize_t end = pos + 1 + length_at(data + pos + 1);
        if (end - pos < 5 || end > n)
            Py_RETURN_NONE;
        count++;
        pos = end;
    }
    PyObject *starts = PyList_New(count);
    PyObject *shape = PyBytes_FromStringAndSize(NULL, count);
    if (starts == NULL || shape == NULL)
        goto fail;
    unsigned char *types = (unsigned char *)PyBytes_AS_STRING(shape);
    pos = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *at = PyLong_FromSsize_t(pos);
        if (at == NULL)
            goto fail;
        PyList_SET_ITEM(starts, i, at);
        types[i] = data[pos];
        pos += 1 + length_at(data + pos + 1);
    }
    PyObject *out = PyTuple_Pack(2, starts, shape);
    Py_DECREF(starts);
    Py_DECREF(shape);
    return out;
fail:
    Py_XDECREF(starts);
    Py_XDECREF(shape);
    return NULL;
}

/* unnamed_batch(data) -> ([starts], shape, nul) or None: see speedups.py_unnamed_batch. */
static PyObject *
unnamed_batch(PyObject *self, PyObject *arg)
{
    if (!PyBytes_CheckExact(arg)) {
        PyErr_SetString(PyExc_TypeError, "unnamed_batch(data: bytes)");
        return NULL;
    }
    PyObject *framed = frame(arg);
    if (framed == NULL || framed == Py_None)
        return framed;
    PyObject *starts = PyTuple_GET_ITEM(framed, 0), *shape = PyTuple_GET_ITEM(framed, 1);
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(arg);
    const char *types = PyBytes_AS_STRING(shape);
    Py_ssize_t n = PyBytes_GET_SIZE(arg), count = PyBytes_GET_SIZE(shape), nul = -1;
    if ((count == 5 && memcmp(types, "PBDES", 5) == 0) || (count == 4 && memcmp(types, "PBES", 4) == 0)) {
        Py_ssize_t bind = PyLong_AsSsize_t(PyList_GET_ITEM(starts, 1));
        Py_ssize_t execute = PyLong_AsSsize_t(PyList_GET_ITEM(starts, count - 2));
        Py_ssize_t describe = count == 5 ? PyLong_AsSsize_t(PyList_GET_ITEM(starts, 2)) : 0;
        /* (every byte read below is within data: an Execute and a Sync follow the Bind, the Describe) */
        if (bind > 6) {
            const unsigned char *end = memchr(data + 6, 0, (size_t)(bind - 6));
            nul = end != NULL ? end - data : -1;
        }
        if (data[5] != 0 || data[bind + 5] != 0 || data[bind + 6] != 0 || data[execute + 5] != 0
                || (count == 5 && ((data[describe + 5] != 'P' && data[describe + 5] != 'S')
                                   || data[describe + 6] != 0)))
            nul = -1;  /* (a named statement or portal) */
        (void)n;
    } else if ((count == 4 && memcmp(types, "BDES", 4) == 0) || (count == 3 && memcmp(types, "BES", 3) == 0)) {
        /* a named statement's execution: the unnamed portal bound to a statement named in the Bind,
         * [described,] executed (every byte read is within data: an Execute and a Sync follow) */
        Py_ssize_t next = PyLong_AsSsize_t(PyList_GET_ITEM(starts, 1));
        Py_ssize_t execute = PyLong_AsSsize_t(PyList_GET_ITEM(starts, count - 2));
        if (data[5] == 0 && next > 6) {
            const unsigned char *end = memchr(data + 6, 0, (size_t)(next - 6));
            if (end != NULL && end > data + 6 && data[execute + 5] == 0
                    && (count == 3 || (data[next + 5] == 'P' && data[next + 6] == 0)))
                nul = end - data;
        }
    }
    PyObject *nul_obj = PyLong_FromSsize_t(nul);
    if (nul_obj == NULL) {
        Py_DECREF(framed);
        return NULL;
    }
    PyObject *out = PyTuple_Pack(3, starts, shape, nul_obj);
    Py_DECREF(nul_obj);
    Py_DECREF(framed);
    return out;
}

/* read(fd) -> bytes: see speedups.py_read. os.read(fd, READ_SIZE) without giving up the GIL (the
 * descriptor is non-blocking: the call never waits, and giving the GIL up and taking it back cost
 * more than the system call) and without a bytes object of READ_SIZE shrunk to what came. */
static PyObject *
read_(PyObject *self, PyObject *arg)
{
    int fd = descriptor(arg);
    if (fd == -1)
        return NULL;
    for (;;) {
        ssize_t n = read(fd, scratch, READ_SIZE);
        if (n >= 0)
            return PyBytes_FromStringAndSize(scratch, n);
        if (!again(errno))
            return NULL;
    }
}

/* write(fd, data) -> int: os.write(fd, data) without giving up the GIL (as read()). */
static PyObject *
write_(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "write(fd, data)");
        return NULL;
    }
    int fd = descriptor(args[0]);
    if (fd == -1)
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    for (;;) {
        ssize_t n = write(fd, view.buf, (size_t)view.len);
        if (n >= 0) {
            PyBuffer_Release(&view);
            return PyLong_FromSsize_t(n);
        }
        if (!again(errno)) {
            PyBuffer_Release(&view);
            return NULL;
        }
    }
}

/* read_cstr(buf, pos) -> (str, next_pos): see speedups.py_read_cstr (the NUL-terminated string at
 * pos of any bytes-like buf, decoded as UTF-8 with replacement; ValueError without a NUL). */
static PyObject *
read_cstr(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "read_cstr(buf, pos)");
        return NULL;
    }
    Py_ssize_t pos = PyNumber_AsSsize_t(args[1], PyExc_OverflowError);
    if (pos == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const char *buf = (const char *)view.buf;
    Py_ssize_t n = view.len;
    if (pos < 0) {  /* (bytes.index's start: from the end) */
        pos += n;
        if (pos < 0)
            pos = 0;
    }
    const char *nul = pos < n ? memchr(buf + pos, 0, (size_t)(n - pos)) : NULL;
    if (nul == NULL) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "subsection not found");
        return NULL;
    }
    Py_ssize_t end = nul - buf;
    PyObject *text = PyUnicode_DecodeUTF8(buf + pos, end - pos, "replace");
    PyBuffer_Release(&view);
    if (text == NULL)
        return NULL;
    PyObject *next = PyLong_FromSsize_t(end + 1);
    if (next == NULL) {
        Py_DECREF(text);
        return NULL;
    }
    PyObject *out = PyTuple_New(2);
    if (out == NULL) {
        Py_DECREF(text);
        Py_DECREF(next);
        return NULL;
    }
    PyTuple_SET_ITEM(out, 0, text);
    PyTuple_SET_ITEM(out, 1, next);
    return out;
}

/* follow(obj, name): see speedups.py_follow. A callable that calls whatever obj.name holds when
 * it is called (nothing when None): a read watcher's callback that follows its connection's
 * listener of the moment without a Python frame of its own. */
typedef struct {
    PyObject_HEAD
    PyObject *obj;
    PyObject *name;
    vectorcallfunc vectorcall;
} Follow;

static PyObject *
follow_call(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Follow *f = (Follow *)self;
    if (PyVectorcall_NARGS(nargsf) != 0 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "a follow() takes no arguments");
        return NULL;
    }
    PyObject *callback = PyObject_GetAttr(f->obj, f->name);
    if (callback == NULL)
        return NULL;
    if (callback == Py_None) {
        Py_DECREF(callback);
        Py_RETURN_NONE;
    }
    PyObject *out = PyObject_CallNoArgs(callback);
    Py_DECREF(callback);
    return out;
}

static int
follow_traverse(Follow *f, visitproc visit, void *arg)
{
    Py_VISIT(f->obj);
    return 0;
}

static int
follow_clear(Follow *f)
{
    Py_CLEAR(f->obj);
    return 0;
}

static void
follow_dealloc(Follow *f)
{
    PyObject_GC_UnTrack(f);
    Py_CLEAR(f->obj);
    Py_CLEAR(f->name);
    PyObject_GC_Del(f);
}

static PyTypeObject FollowType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "helios_proxy._speedups.follow",
    .tp_basicsize = sizeof(Follow),
    .tp_dealloc = (destructor)follow_dealloc,
    .tp_vectorcall_offset = offsetof(Follow, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "follow(obj, name): a callable that calls obj.<name>() as it is then (nothing when None).",
    .tp_traverse = (traverseproc)follow_traverse,
    .tp_clear = (inquiry)follow_clear,
};

static PyObject *
follow(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyUnicode_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "follow(obj, name: str)");
        return NULL;
    }
    Follow *f = PyObject_GC_New(Follow, &FollowType);
    if (f == NULL)
        return NULL;
    Py_INCREF(args[0]);
    f->obj = args[0];
    Py_INCREF(args[1]);
    f->name = args[1];
    PyUnicode_InternInPlace(&f->name);
    f->vectorcall = follow_call;
    PyObject_GC_Track(f);
    return (PyObject *)f;
}

static PyMethodDef methods[] = {
    {"walk_answer", (PyCFunction)(void (*)(void))walk_answer, METH_FASTCALL,
     "walk_answer(data, pos, tail, entries, k, stops, middle): the index of the entry whose answer "
     "ends at tail, walking the messages from pos by their headers; -1 where the walk must stop."},
    {"whole_answer", (PyCFunction)(void (*)(void))whole_answer, METH_FASTCALL,
     "whole_answer(data, entries, stops, middle, ended): the status of data's final ReadyForQuery if data is the "
     "whole answer to entries, else None."},
    {"query_key", (PyCFunction)(void (*)(void))query_key, METH_FASTCALL,
     "query_key(data, table): data.translate(table) if data is one whole simple Query with no NUL "
     "inside its text, else None (a key equal to one made lately: that object again)."},
    {"key_of", (PyCFunction)(void (*)(void))key_of, METH_FASTCALL,
     "key_of(data, start, end): data[start:end] (an equal key made lately: that object again)."},
    {"unnamed_batch", (PyCFunction)unnamed_batch, METH_O,
     "unnamed_batch(data): ([starts], shape) of data's whole messages and where the Parse's text ends if data is one unnamed "
     "extended batch, else -1; None if data is not whole messages."},
    {"read", (PyCFunction)read_, METH_O,
     "read(fd): os.read(fd, 65536) of a non-blocking descriptor, the GIL kept."},
    {"write", (PyCFunction)(void (*)(void))write_, METH_FASTCALL,
     "write(fd, data): os.write(fd, data) of a non-blocking descriptor, the GIL kept."},
    {"read_cstr", (PyCFunction)(void (*)(void))read_cstr, METH_FASTCALL,
     "read_cstr(buf, pos): (the NUL-terminated string at pos, decoded as UTF-8 with replacement, "
     "the position after its NUL); ValueError without a NUL."},
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(data, wanted, max_size): ([(type, body, end)] of the whole messages at data's start whose type is in "
     "wanted, the position where the walk stopped)."},
    {"last_tag", (PyCFunction)(void (*)(void))last_tag, METH_FASTCALL,
     "last_tag(data, stop): the tag (with its NUL) of the last CommandComplete in the whole messages of "
     "data[:stop], or None."},
    {"follow", (PyCFunction)(void (*)(void))follow, METH_FASTCALL,
     "follow(obj, name): a callable that calls obj.<name>() as it is then (nothing when None)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "helios_proxy._speedups", "The fast path's byte walks in C (speedups.py).", -1, methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (PyType_Ready(&FollowType) < 0)
        return NULL;
    return PyModule_Create(&module);
}
