"""A throwaway LDAP directory (Debian's slapd, installed by scripts/setup-system --test) on a free
loopback port: dc=helios,dc=test with ou=people and the users given; stopped at the end."""
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from helios_proxy.devcluster import free_port

SUFFIX = "dc=helios,dc=test"


@pytest.fixture(scope="module")
def ldap_server(tmp_path_factory):
    slapd = shutil.which("slapd") or "/usr/sbin/slapd"
    if not os.path.exists(slapd):
        pytest.fail("slapd is not installed (scripts/setup-system --test installs it)")
    base = tmp_path_factory.mktemp("ldap")
    (base / "db").mkdir()
    port = free_port()
    conf = base / "slapd.conf"
    conf.write_text("include /etc/ldap/schema/core.schema\ninclude /etc/ldap/schema/cosine.schema\n"
                    "include /etc/ldap/schema/inetorgperson.schema\nmodulepath /usr/lib/ldap\n"
                    f"moduleload back_mdb\npidfile {base}/slapd.pid\ndatabase mdb\nsuffix \"{SUFFIX}\"\n"
                    f"rootdn \"cn=admin,{SUFFIX}\"\nrootpw admin-pass\ndirectory {base}/db\n")
    people = [("ldap_user", "ldap-pass"), ("app", "app-ldap-pass")]
    ldif = (f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: helios\ndc: helios\n\n"
            f"dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n\n")
    ldif += "".join(f"dn: uid={uid},ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\n"
                    f"sn: {uid}\nuserPassword: {pw}\n\n" for uid, pw in people)
    (base / "base.ldif").write_text(ldif)
    subprocess.run(["slapadd", "-f", str(conf), "-l", str(base / "base.ldif")], check=True, capture_output=True)
    subprocess.run([slapd, "-f", str(conf), "-h", f"ldap://127.0.0.1:{port}/"], check=True, capture_output=True)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "slapd does not listen"
            time.sleep(0.05)
    yield {"url": f"ldap://127.0.0.1:{port}", "suffix": SUFFIX, "people": dict(people)}
    try:
        os.kill(int((base / "slapd.pid").read_text()), signal.SIGTERM)
    except (OSError, ValueError):
        pass
