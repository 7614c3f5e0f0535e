//! Windows batch: shared scaffolding and benign families.

use rand::Rng;

use super::names::{self, fill, pick, R};
use super::{Draft, Family};

pub(crate) const FAMILIES: &[Family] = &[
    Family {
        name: "msbuild-build",
        description: "A Visual Studio solution build script",
        gen: msbuild,
    },
    Family {
        name: "robocopy-backup",
        description: "A file backup job built on robocopy mirroring",
        gen: robocopy_backup,
    },
    Family {
        name: "temp-cleanup",
        description: "A disk cleanup script for temporary and cache folders",
        gen: temp_cleanup,
    },
    Family {
        name: "network-diagnostics",
        description: "A network troubleshooting script that gathers connectivity data",
        gen: net_diag,
    },
    Family {
        name: "msi-deployment",
        description: "A silent software deployment script for MSI packages",
        gen: msi_deploy,
    },
    Family {
        name: "logon-drive-mapping",
        description: "A domain logon script that maps network drives and printers",
        gen: logon,
    },
];

pub(crate) fn header(r: &mut R, what: &str) -> String {
    let mut s = String::from("@echo off\n");
    let c = pick(r, &["rem", "::", "REM"]);
    s.push_str(&format!("{c} {what}\n"));
    if r.random_bool(0.5) {
        s.push_str(&format!(
            "{c} Owner: {} ({}.local)\n",
            names::user(r),
            names::company(r)
        ));
    }
    if r.random_bool(0.6) {
        s.push_str("setlocal EnableExtensions EnableDelayedExpansion\n");
    }
    s.push('\n');
    s
}

pub(crate) const LOG_SUB: &str = ":log\necho [%date% %time%] %~1\nif defined LOGFILE echo [%date% %time%] %~1>>\"%LOGFILE%\"\ngoto :eof\n";

fn msbuild(r: &mut R) -> Draft {
    let sln = format!("{}.sln", names::pascal(names::product(r)));
    let cfg = pick(r, &["Release", "Debug"]);
    let share = format!("\\\\{}\\drops", names::internal_host(r));
    let vs = pick(r, &["2019", "2022"]);
    let mut c = header(
        r,
        &format!("Build {sln} and copy the output to the drop share"),
    );
    c.push_str(&fill(
        r#"set "CONFIG=%~1"
if "%CONFIG%"=="" set "CONFIG=@CFG@"
set "LOGFILE=%~dp0build.log"
set "VSWHERE=%ProgramFiles(x86)%\Microsoft Visual Studio\Installer\vswhere.exe"

for /f "usebackq tokens=*" %%i in (`"%VSWHERE%" -version [@VSN@^,) -latest -property installationPath`) do set "VSDIR=%%i"
if not defined VSDIR (
    call :log "Visual Studio @VS@ not found"
    exit /b 1
)
call "%VSDIR%\Common7\Tools\VsDevCmd.bat" -arch=amd64 >nul

call :log "restoring packages"
nuget restore "@SLN@" || goto :fail
call :log "building @SLN@ (%CONFIG%)"
msbuild "@SLN@" /m /p:Configuration=%CONFIG% /p:Platform="Any CPU" /v:minimal /fl /flp:logfile=msbuild.log
if errorlevel 1 goto :fail

call :log "running unit tests"
vstest.console.exe tests\bin\%CONFIG%\*.Tests.dll /Logger:trx || goto :fail

xcopy /e /i /y "bin\%CONFIG%" "@SHARE@\%CONFIG%\%date:~-4%%date:~4,2%%date:~7,2%" >nul
call :log "done"
exit /b 0

:fail
call :log "build failed with errorlevel %errorlevel%"
exit /b 1

"#,
        &[("CFG", cfg), ("VSN", if vs == "2022" { "17.0" } else { "16.0" }), ("VS", vs), ("SLN", &sln), ("SHARE", &share)],
    ));
    c.push_str(LOG_SUB);
    Draft {
        content: c,
        purpose: format!("builds the Visual Studio solution {sln} and publishes the binaries to {share}"),
        steps: vec![
            format!("takes the build configuration from %~1, defaulting to {cfg}, and locates Visual Studio {vs} with vswhere.exe"),
            "loads the developer environment through VsDevCmd.bat and runs nuget restore".into(),
            format!("builds {sln} with msbuild /m and a file logger, jumping to :fail on errorlevel 1"),
            "runs the unit test assemblies with vstest.console.exe and a trx logger".into(),
            format!("copies the output folder with xcopy /e /i /y into a dated folder under {share}"),
        ],
        effects: vec!["It only produces build outputs, build.log and msbuild.log, and a copy on the drop share.".into()],
        behaviours: vec!["Builds and tests software".into()],
        iocs: vec![sln, share, "vswhere.exe".into()],
    }
}

fn robocopy_backup(r: &mut R) -> Draft {
    let src = pick(
        r,
        &[
            "D:\\Data",
            "C:\\Users",
            "E:\\Projects",
            "D:\\Shares\\Finance",
        ],
    );
    let dst = format!("\\\\{}\\backup\\%COMPUTERNAME%", names::internal_host(r));
    let threads = pick(r, &[8, 16, 32]);
    let mut c = header(r, "Nightly mirror of the data volume to the NAS");
    c.push_str(&fill(
        r#"set "SRC=@SRC@"
set "DST=@DST@"
set "LOGFILE=C:\Logs\backup_%date:~-4%%date:~4,2%%date:~7,2%.log"
if not exist C:\Logs mkdir C:\Logs

call :log "mirroring %SRC% to %DST%"
robocopy "%SRC%" "%DST%" /MIR /Z /R:2 /W:5 /MT:@THREADS@ /XD "$RECYCLE.BIN" "System Volume Information" /XF *.tmp ~$* /NP /LOG+:"%LOGFILE%"
rem robocopy exit codes below 8 mean success
if %errorlevel% GEQ 8 (
    call :log "robocopy failed with %errorlevel%"
    eventcreate /T ERROR /ID 901 /L APPLICATION /SO NightlyBackup /D "Backup of %SRC% failed" >nul
    exit /b %errorlevel%
)
forfiles /p C:\Logs /m backup_*.log /d -30 /c "cmd /c del @path" 2>nul
call :log "backup finished"
exit /b 0

"#,
        &[("SRC", src), ("DST", &dst), ("THREADS", &threads.to_string())],
    ));
    c.push_str(LOG_SUB);
    Draft {
        content: c,
        purpose: format!("mirrors {src} to the backup share {dst} with robocopy every night"),
        steps: vec![
            "creates C:\\Logs if needed and names a dated log file".into(),
            format!("runs robocopy /MIR /Z /R:2 /W:5 /MT:{threads}, excluding the recycle bin, System Volume Information and temporary files"),
            "treats exit codes of 8 or more as failure and writes event 901 to the Application log with eventcreate".into(),
            "deletes backup logs older than 30 days with forfiles".into(),
        ],
        effects: vec![format!("The share mirrors {src} exactly, including deletions, which is the intended behaviour of /MIR.")],
        behaviours: vec!["Backs up files to a network share".into()],
        iocs: vec![src.to_string(), "robocopy".into(), "eventcreate".into()],
    }
}

fn temp_cleanup(r: &mut R) -> Draft {
    let days = r.random_range(3..30);
    let mut c = header(r, "Free disk space: clear temp folders and caches");
    c.push_str(&fill(
        r#"for /f "tokens=3" %%a in ('dir C:\ ^| find "bytes free"') do set "FREE_BEFORE=%%a"
call :log "free before: %FREE_BEFORE%"

del /f /s /q "%TEMP%\*" >nul 2>&1
for /d %%d in ("%TEMP%\*") do rd /s /q "%%d" 2>nul
forfiles /p "C:\Windows\Temp" /s /d -@DAYS@ /c "cmd /c if @isdir==FALSE del /q @path" 2>nul
del /q "C:\Windows\SoftwareDistribution\Download\*" 2>nul
for /d %%u in (C:\Users\*) do (
    if exist "%%u\AppData\Local\Google\Chrome\User Data\Default\Cache" rd /s /q "%%u\AppData\Local\Google\Chrome\User Data\Default\Cache"
    if exist "%%u\AppData\Local\Microsoft\Windows\INetCache" rd /s /q "%%u\AppData\Local\Microsoft\Windows\INetCache"
)
cleanmgr /sagerun:1
call :log "cleanup complete"
exit /b 0

"#,
        &[("DAYS", &days.to_string())],
    ));
    c.push_str(LOG_SUB);
    Draft {
        content: c,
        purpose: "frees disk space by emptying temporary folders, the Windows Update download cache and browser caches".into(),
        steps: vec![
            "records the free space on C: by parsing dir output".into(),
            "deletes everything under %TEMP% with del /f /s /q and rd /s /q".into(),
            format!("removes files older than {days} days from C:\\Windows\\Temp with forfiles"),
            "clears C:\\Windows\\SoftwareDistribution\\Download and the Chrome and INetCache folders of every profile".into(),
            "runs cleanmgr /sagerun:1 with the saved Disk Cleanup profile".into(),
        ],
        effects: vec!["Only caches and temporary data are deleted; documents and settings stay in place.".into()],
        behaviours: vec!["Cleans temporary files".into()],
        iocs: vec!["cleanmgr /sagerun:1".into(), "C:\\Windows\\Temp".into()],
    }
}

fn net_diag(r: &mut R) -> Draft {
    let host = names::internal_host(r);
    let gw = names::private_ip(r);
    let out = pick(
        r,
        &[
            "%USERPROFILE%\\Desktop\\netdiag.txt",
            "%TEMP%\\netdiag.txt",
            "C:\\Support\\netdiag.txt",
        ],
    );
    let mut c = header(r, "Collect network diagnostics for the help desk");
    c.push_str(&fill(
        r#"set "OUT=@OUT@"
echo Network diagnostics for %COMPUTERNAME% at %date% %time% > "%OUT%"
call :section "IP configuration" "ipconfig /all"
call :section "Routes" "route print"
call :section "Gateway ping" "ping -n 4 @GW@"
call :section "DNS lookup" "nslookup @HOST@"
call :section "Trace" "tracert -d -h 15 @HOST@"
call :section "Listening ports" "netstat -ano"
call :section "Proxy" "netsh winhttp show proxy"
ipconfig /flushdns >nul
echo Report written to %OUT%
start notepad "%OUT%"
exit /b 0

:section
echo.>> "%OUT%"
echo ===== %~1 =====>> "%OUT%"
%~2 >> "%OUT%" 2>&1
goto :eof
"#,
        &[("OUT", out), ("GW", &gw), ("HOST", &host)],
    ));
    Draft {
        content: c,
        purpose: format!("collects a network troubleshooting report for the help desk into {out}"),
        steps: vec![
            "writes a header with the computer name and time to the report".into(),
            format!("appends ipconfig /all, route print, a four-packet ping to {gw}, nslookup and tracert -d for {host}"),
            "adds netstat -ano and netsh winhttp show proxy output through the :section subroutine".into(),
            "flushes the DNS cache with ipconfig /flushdns and opens the report in Notepad".into(),
        ],
        effects: vec!["The system is only read; the flushed DNS cache is the single state change.".into()],
        behaviours: vec!["Collects network diagnostics".into()],
        iocs: vec![host, gw, "netstat -ano".into()],
    }
}

fn msi_deploy(r: &mut R) -> Draft {
    let prod = names::pascal(names::product(r));
    let ver = names::version(r);
    let share = format!("\\\\{}\\software\\{prod}", names::internal_host(r));
    let sha = format!(
        "{:016x}{:016x}{:016x}{:016x}",
        r.random::<u64>(),
        r.random::<u64>(),
        r.random::<u64>(),
        r.random::<u64>()
    );
    let mut c = header(
        r,
        &format!("Deploy {prod} {ver} silently (run from GPO startup)"),
    );
    c.push_str(&fill(
        r#"set "PKG=@SHARE@\@PROD@-@VER@-x64.msi"
set "MARK=%ProgramData%\@PROD@\installed-@VER@.txt"
set "LOGFILE=%WINDIR%\Temp\@PROD@-install.log"

if exist "%MARK%" (
    call :log "@PROD@ @VER@ already installed"
    exit /b 0
)
reg query "HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall" /s /f "@PROD@" >nul 2>&1 && (
    call :log "removing previous @PROD@ version"
    wmic product where "name like '@PROD@%%'" call uninstall /nointeractive >nul
)
rem verify the package against the hash published by the packaging team
set "HASHOK="
for /f "skip=1 tokens=*" %%h in ('certutil -hashfile "%PKG%" SHA256 ^| find /v ":"') do (
    if /i "%%h"=="@SHA@" set "HASHOK=1"
)
if not defined HASHOK (
    call :log "hash mismatch for %PKG%, aborting"
    exit /b 2
)
call :log "installing %PKG%"
msiexec /i "%PKG%" /qn /norestart ALLUSERS=1 /l*v "%WINDIR%\Temp\@PROD@-msi.log"
if %errorlevel% NEQ 0 if %errorlevel% NEQ 3010 (
    call :log "msiexec failed: %errorlevel%"
    exit /b %errorlevel%
)
if not exist "%ProgramData%\@PROD@" mkdir "%ProgramData%\@PROD@"
echo %date% %time%> "%MARK%"
call :log "install ok"
exit /b 0

"#,
        &[
            ("SHARE", &share),
            ("PROD", &prod),
            ("VER", &ver),
            ("SHA", &sha),
        ],
    ));
    c.push_str(LOG_SUB);
    Draft {
        content: c,
        purpose: format!("silently deploys {prod} version {ver} from the software share {share}"),
        steps: vec![
            format!("exits early when the marker file installed-{ver}.txt already exists under %ProgramData%\\{prod}"),
            "looks for an older version in the Uninstall registry key and removes it through wmic product call uninstall".into(),
            "verifies the package with certutil -hashfile SHA256 against a pinned hash and aborts on mismatch".into(),
            format!("runs msiexec /i on {prod}-{ver}-x64.msi with /qn /norestart ALLUSERS=1 and a verbose log"),
            "accepts exit code 3010 as success and writes the marker file".into(),
        ],
        effects: vec![format!("Machines receiving the startup script end up with {prod} {ver} installed once.")],
        behaviours: vec!["Deploys software packages".into()],
        iocs: vec![share, "msiexec /i".into()],
    }
}

fn logon(r: &mut R) -> Draft {
    let fs = names::internal_host(r);
    let ps = names::internal_host(r);
    let dept = pick(r, &["Finance", "HR", "Engineering", "Sales", "Legal"]);
    let drive = pick(r, &["H:", "S:", "P:", "G:"]);
    let mut c = header(r, "Domain logon script: drives, printers, time sync");
    c.push_str(&fill(
        r#"net use @DRIVE@ /delete /y >nul 2>&1
net use @DRIVE@ "\\@FS@\@DEPT@" /persistent:no
net use U: "\\@FS@\home$\%USERNAME%" /persistent:no

net user "%USERNAME%" /domain | find /i "@DEPT@-Printers" >nul && (
    rundll32 printui.dll,PrintUIEntry /in /n "\\@PS@\@DEPT@-MFP"
)
net time \\@FS@ /set /y >nul 2>&1
if not exist "%APPDATA%\@DEPT@" mkdir "%APPDATA%\@DEPT@"
copy /y "\\@FS@\netlogon\templates\*.dotx" "%APPDATA%\Microsoft\Templates\" >nul
echo Welcome %USERNAME%, drives mapped at %time%.
"#,
        &[("DRIVE", drive), ("FS", &fs), ("DEPT", dept), ("PS", &ps)],
    ));
    Draft {
        content: c,
        purpose: format!("maps the {dept} department drives and printer for a domain user at logon"),
        steps: vec![
            format!("maps {drive} to \\\\{fs}\\{dept} and U: to the user's home share with net use /persistent:no"),
            format!("checks group membership with net user /domain and installs \\\\{ps}\\{dept}-MFP through printui.dll"),
            format!("synchronises the clock with net time \\\\{fs} /set /y"),
            "copies Office templates from the netlogon share into the user's profile".into(),
        ],
        effects: vec!["Changes are per session and per user, matching a standard logon script.".into()],
        behaviours: vec!["Maps network drives at logon".into()],
        iocs: vec![fs, format!("{dept}-MFP")],
    }
}
