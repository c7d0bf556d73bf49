;; HeliosProxy WASM plugin: refuse every query whose text contains a pattern.
;; The pattern comes from [plugins."wasm:block_pattern"] pattern = "..." (default: pg_sleep).
;; ABI: plugins/README.md. No toolchain needed: the proxy compiles .wat files itself.
(module
  (import "env" "ctx_get" (func $ctx_get (param i32 i32 i32 i32) (result i32)))
  (import "env" "reject" (func $reject (param i32 i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "pg_sleep")                                      ;; default pattern, 8 bytes
  (data (i32.const 16) "42501")                                        ;; SQLSTATE: insufficient privilege
  (data (i32.const 32) "query blocked by the block_pattern WASM plugin")  ;; 46 bytes
  (data (i32.const 96) "config:pattern")                               ;; 14 bytes
  (global $heap i32 (i32.const 1024))

  ;; alloc(size): where the host writes the query text (one call at a time, so one buffer)
  (func (export "alloc") (param $size i32) (result i32)
    (local $needed i32)
    (local.set $needed (i32.add (i32.shr_u (i32.add (global.get $heap) (local.get $size)) (i32.const 16))
                                (i32.const 1)))
    (if (i32.gt_u (local.get $needed) (memory.size))
      (then (drop (memory.grow (i32.sub (local.get $needed) (memory.size))))))
    (global.get $heap))

  ;; 1 when the pattern (pat, plen) occurs at text + i
  (func $match_at (param $text i32) (param $i i32) (param $pat i32) (param $plen i32) (result i32)
    (local $j i32)
    (block $no
      (loop $next
        (br_if 1 (i32.ge_u (local.get $j) (local.get $plen)))
        (br_if $no (i32.ne (i32.load8_u (i32.add (local.get $text) (i32.add (local.get $i) (local.get $j))))
                           (i32.load8_u (i32.add (local.get $pat) (local.get $j)))))
        (local.set $j (i32.add (local.get $j) (i32.const 1)))
        (br $next)))
    (if (i32.lt_u (local.get $j) (local.get $plen)) (then (return (i32.const 0))))
    (i32.const 1))

  (func (export "on_query_start") (param $sql i32) (param $len i32)
    (local $pat i32) (local $plen i32) (local $i i32)
    (local.set $pat (i32.const 512))
    (local.set $plen (call $ctx_get (i32.const 96) (i32.const 14) (i32.const 512) (i32.const 256)))
    (if (i32.le_s (local.get $plen) (i32.const 0))
      (then (local.set $pat (i32.const 0)) (local.set $plen (i32.const 8))))
    (block $done
      (loop $scan
        (br_if $done (i32.gt_s (local.get $i) (i32.sub (local.get $len) (local.get $plen))))
        (if (call $match_at (local.get $sql) (local.get $i) (local.get $pat) (local.get $plen))
          (then
            (call $reject (i32.const 16) (i32.const 5) (i32.const 32) (i32.const 46))
            (return)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $scan))))
)
