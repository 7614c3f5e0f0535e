//! PowerShell: shared scaffolding and benign administration families.

use rand::Rng;

use super::names::{self, fill, pick, R};
use super::obfuscate::b64encode;
use super::{Draft, Family};

pub(crate) const FAMILIES: &[Family] = &[
    Family {
        name: "ad-user-report",
        description: "An Active Directory reporting script for stale and locked accounts",
        gen: ad_report,
    },
    Family {
        name: "iis-deployment",
        description: "A web application deployment script for IIS",
        gen: iis_deploy,
    },
    Family {
        name: "disk-space-report",
        description: "A disk space monitoring and cleanup script",
        gen: disk_report,
    },
    Family {
        name: "service-monitor",
        description: "A Windows service watchdog that restarts stopped services",
        gen: service_monitor,
    },
    Family {
        name: "config-blob-install",
        description: "An agent installer that writes an embedded base64 configuration",
        gen: config_blob,
    },
    Family {
        name: "patch-inventory",
        description: "A patch and software inventory collector",
        gen: patch_inventory,
    },
];

pub(crate) fn header(r: &mut R, synopsis: &str, params: &[(&str, &str, &str)]) -> String {
    let mut s = String::new();
    if r.random_bool(0.7) {
        s.push_str(&format!(
            "<#\n.SYNOPSIS\n    {synopsis}\n.NOTES\n    Author: {}\n#>\n",
            names::user(r)
        ));
    }
    if !params.is_empty() {
        s.push_str("[CmdletBinding()]\nparam(\n");
        let p: Vec<String> = params
            .iter()
            .map(|(ty, name, def)| format!("    [{ty}]${name} = {def}"))
            .collect();
        s.push_str(&p.join(",\n"));
        s.push_str("\n)\n");
    }
    s.push_str("$ErrorActionPreference = 'Stop'\n\n");
    s
}

pub(crate) const LOG_FN: &str = "function Write-Log {\n    param([string]$Message, [string]$Level = 'INFO')\n    $line = '{0} [{1}] {2}' -f (Get-Date -Format 's'), $Level, $Message\n    Write-Host $line\n    if ($LogPath) { Add-Content -Path $LogPath -Value $line }\n}\n\n";

fn ad_report(r: &mut R) -> Draft {
    let days = r.random_range(30..180);
    let ou = format!(
        "OU={},DC={},DC=local",
        pick(r, &["Staff", "Users", "Employees", "Contractors"]),
        names::company(r)
    );
    let smtp = names::internal_host(r);
    let to = format!(
        "it-{}@{}.com",
        pick(r, &["ops", "security", "helpdesk"]),
        names::company(r)
    );
    let mut c = header(
        r,
        "Report stale and locked-out AD accounts",
        &[
            ("int", "InactiveDays", &days.to_string()),
            ("string", "SearchBase", &format!("'{ou}'")),
            ("string", "LogPath", "\"$env:TEMP\\ad-report.log\""),
        ],
    );
    c.push_str(LOG_FN);
    c.push_str(&fill(
        r#"Import-Module ActiveDirectory
$cutoff = (Get-Date).AddDays(-$InactiveDays)

function Get-StaleUsers {
    Get-ADUser -SearchBase $SearchBase -Filter { Enabled -eq $true -and LastLogonDate -lt $cutoff } -Properties LastLogonDate, Department, Manager |
        Select-Object SamAccountName, Name, Department, LastLogonDate
}

function Get-LockedUsers {
    Search-ADAccount -LockedOut -SearchBase $SearchBase | Select-Object SamAccountName, Name, LockedOut
}

try {
    $stale = @(Get-StaleUsers)
    $locked = @(Get-LockedUsers)
    Write-Log "found $($stale.Count) stale and $($locked.Count) locked accounts"
    $csv = Join-Path $env:TEMP ("ad-report-{0:yyyyMMdd}.csv" -f (Get-Date))
    $stale | Export-Csv -Path $csv -NoTypeInformation
    $body = ($locked | ConvertTo-Html -Fragment) -join "`n"
    Send-MailMessage -SmtpServer '@SMTP@' -From 'noreply@@SMTP@' -To '@TO@' `
        -Subject "AD account report $(Get-Date -Format d)" -Body $body -BodyAsHtml -Attachments $csv
} catch {
    Write-Log $_.Exception.Message 'ERROR'
    exit 1
}
"#,
        &[("SMTP", &smtp), ("TO", &to)],
    ));
    Draft {
        content: c,
        purpose: format!("reports Active Directory accounts in {ou} that have not logged on for {days} days or are locked out"),
        steps: vec![
            "imports the ActiveDirectory module and computes the cut-off date from the InactiveDays parameter".into(),
            "queries enabled users with an old LastLogonDate through Get-ADUser and locked accounts through Search-ADAccount -LockedOut".into(),
            "exports the stale accounts to a dated CSV file in the temp folder with Export-Csv".into(),
            format!("mails the CSV and an HTML table of locked accounts to {to} through the SMTP server {smtp} with Send-MailMessage"),
        ],
        effects: vec!["Directory objects are only read; no account is modified or disabled.".into()],
        behaviours: vec!["Reports on directory accounts".into()],
        iocs: vec![to, smtp, "Get-ADUser".into()],
    }
}

fn iis_deploy(r: &mut R) -> Draft {
    let site = names::pascal(names::product(r));
    let share = format!("\\\\{}\\releases\\{site}", names::internal_host(r));
    let root = format!("D:\\inetpub\\{site}");
    let pool = format!("{site}Pool");
    let mut c = String::new();
    c.push_str(&header(
        r,
        &format!("Deploy {site} to IIS"),
        &[
            ("string", "Version", "'latest'"),
            ("string", "LogPath", "'C:\\Deploy\\deploy.log'"),
        ],
    ));
    c.push_str("# Deployment runs from a build agent where scripts are unsigned\nSet-ExecutionPolicy -ExecutionPolicy Bypass -Scope Process -Force\n\n");
    c.push_str(LOG_FN);
    c.push_str(&fill(
        r#"Import-Module WebAdministration
$source = Join-Path '@SHARE@' $Version
$target = '@ROOT@'
$backup = "$target.bak-$(Get-Date -Format yyyyMMddHHmm)"

function Stop-Site {
    Stop-WebAppPool -Name '@POOL@'
    while ((Get-WebAppPoolState -Name '@POOL@').Value -ne 'Stopped') { Start-Sleep -Seconds 1 }
}

try {
    Write-Log "deploying $Version from $source"
    Stop-Site
    if (Test-Path $target) { Copy-Item $target $backup -Recurse }
    robocopy $source $target /MIR /XF web.config /NFL /NDL /NP | Out-Null
    if ($LASTEXITCODE -ge 8) { throw "robocopy failed with $LASTEXITCODE" }
    Start-WebAppPool -Name '@POOL@'
    $resp = Invoke-WebRequest -Uri 'http://localhost/@SITE@/health' -UseBasicParsing -TimeoutSec 30
    if ($resp.StatusCode -ne 200) { throw "health check returned $($resp.StatusCode)" }
    Write-Log 'deployment succeeded'
} catch {
    Write-Log "deployment failed: $_" 'ERROR'
    if (Test-Path $backup) { robocopy $backup $target /MIR | Out-Null }
    Start-WebAppPool -Name '@POOL@'
    exit 1
}
"#,
        &[
            ("SHARE", &share),
            ("ROOT", &root),
            ("POOL", &pool),
            ("SITE", &site),
        ],
    ));
    Draft {
        content: c,
        purpose: format!("deploys a release of the {site} web application from {share} to IIS"),
        steps: vec![
            "relaxes the execution policy with Set-ExecutionPolicy Bypass -Scope Process, which affects only this PowerShell process".into(),
            format!("stops the application pool {pool} and waits until Get-WebAppPoolState reports Stopped"),
            format!("backs up {root} and mirrors the release folder into it with robocopy /MIR while keeping web.config"),
            "restarts the pool and calls the local health URL with Invoke-WebRequest".into(),
            "restores the backup and restarts the pool if anything throws".into(),
        ],
        effects: vec!["The process-scoped policy change ends with the session, so the machine's policy is untouched.".into()],
        behaviours: vec!["Deploys a web application".into()],
        iocs: vec![share, pool, "-Scope Process".into()],
    }
}

fn disk_report(r: &mut R) -> Draft {
    let pct = r.random_range(10..25);
    let days = r.random_range(7..60);
    let mut c = header(
        r,
        "Warn on low disk space and prune old IIS logs",
        &[
            ("int", "MinFreePercent", &pct.to_string()),
            ("string", "LogPath", "$null"),
        ],
    );
    c.push_str(LOG_FN);
    c.push_str(&fill(
        r#"$disks = Get-CimInstance -ClassName Win32_LogicalDisk -Filter 'DriveType=3'
foreach ($d in $disks) {
    $free = [math]::Round(($d.FreeSpace / $d.Size) * 100, 1)
    Write-Log ("{0} {1}% free of {2:N0} GB" -f $d.DeviceID, $free, ($d.Size / 1GB))
    if ($free -lt $MinFreePercent) {
        Write-EventLog -LogName Application -Source 'DiskMonitor' -EventId 4001 -EntryType Warning -Message "$($d.DeviceID) below $MinFreePercent% free"
    }
}
$old = Get-ChildItem 'C:\inetpub\logs\LogFiles' -Recurse -Filter *.log | Where-Object LastWriteTime -lt (Get-Date).AddDays(-@DAYS@)
$old | Remove-Item -Force -WhatIf:$WhatIfPreference
Write-Log "removed $($old.Count) IIS log files older than @DAYS@ days"
"#,
        &[("DAYS", &days.to_string())],
    ));
    Draft {
        content: c,
        purpose: format!("checks free space on every fixed disk and removes IIS logs older than {days} days"),
        steps: vec![
            "lists fixed disks with Get-CimInstance Win32_LogicalDisk -Filter DriveType=3".into(),
            format!("computes the free percentage and writes a warning event 4001 to the Application log below {pct} percent"),
            format!("finds .log files under C:\\inetpub\\logs\\LogFiles older than {days} days and deletes them with Remove-Item"),
        ],
        effects: vec!["Only old web server logs are deleted, and -WhatIf support lets an operator preview it.".into()],
        behaviours: vec!["Monitors disk space".into()],
        iocs: vec!["Win32_LogicalDisk".into(), "C:\\inetpub\\logs\\LogFiles".into()],
    }
}

fn service_monitor(r: &mut R) -> Draft {
    let svcs: Vec<String> = (0..r.random_range(2..5))
        .map(|_| format!("{}Svc", names::pascal(names::product(r))))
        .collect();
    let quoted: Vec<String> = svcs.iter().map(|s| format!("'{s}'")).collect();
    let hook = format!(
        "https://{}.webhook.office.com/webhookb2/{}",
        names::company(r),
        names::token(r, 16)
    );
    let mut c = header(
        r,
        "Restart stopped services and notify Teams",
        &[
            ("string[]", "Services", &format!("@({})", quoted.join(", "))),
            ("string", "LogPath", "'C:\\Monitoring\\services.log'"),
        ],
    );
    c.push_str(LOG_FN);
    c.push_str(&fill(
        r#"function Send-Alert([string]$Text) {
    $payload = @{ text = $Text } | ConvertTo-Json
    Invoke-RestMethod -Uri '@HOOK@' -Method Post -Body $payload -ContentType 'application/json'
}

foreach ($name in $Services) {
    $svc = Get-Service -Name $name -ErrorAction SilentlyContinue
    if (-not $svc) { Write-Log "$name not installed" 'WARN'; continue }
    if ($svc.Status -ne 'Running') {
        Write-Log "$name is $($svc.Status), restarting" 'WARN'
        try {
            Start-Service -Name $name
            $svc.WaitForStatus('Running', [TimeSpan]::FromSeconds(60))
            Send-Alert "$env:COMPUTERNAME: restarted $name"
        } catch {
            Send-Alert "$env:COMPUTERNAME: FAILED to restart $name - $_"
        }
    }
}
"#,
        &[("HOOK", &hook)],
    ));
    Draft {
        content: c,
        purpose: format!("watches the Windows services {} and restarts any that stopped", svcs.join(", ")),
        steps: vec![
            "iterates over the Services parameter and reads each with Get-Service".into(),
            "restarts stopped services with Start-Service and waits up to 60 seconds for the Running state".into(),
            format!("posts a success or failure message to the Teams webhook {hook} with Invoke-RestMethod"),
        ],
        effects: vec!["The only state it changes is starting services that were meant to be running.".into()],
        behaviours: vec!["Monitors and restarts services".into()],
        iocs: vec![svcs[0].clone(), hook],
    }
}

fn config_blob(r: &mut R) -> Draft {
    let prod = names::pascal(names::product(r));
    let server = format!("https://{}", names::vendor_host(r));
    let tenant = names::token(r, 12);
    let cfg = format!(
        "{{\n  \"server\": \"{server}\",\n  \"tenant\": \"{tenant}\",\n  \"interval\": {},\n  \"log_level\": \"info\"\n}}\n",
        r.random_range(30..600)
    );
    let blob = b64encode(cfg.as_bytes());
    let dir = format!("C:\\ProgramData\\{prod}");
    let mut c = header(r, &format!("Install the {prod} agent configuration"), &[]);
    c.push_str(&fill(
        r#"# Configuration generated by the management console (base64 to survive copy/paste into GPO)
$ConfigB64 = '@BLOB@'
$dir = '@DIR@'
New-Item -ItemType Directory -Path $dir -Force | Out-Null
$json = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($ConfigB64))
$null = $json | ConvertFrom-Json   # validate before writing
Set-Content -Path (Join-Path $dir 'agent.json') -Value $json -Encoding UTF8
$acl = Get-Acl $dir
$acl.SetAccessRuleProtection($true, $false)
$acl.AddAccessRule((New-Object Security.AccessControl.FileSystemAccessRule('SYSTEM', 'FullControl', 'ContainerInherit,ObjectInherit', 'None', 'Allow')))
$acl.AddAccessRule((New-Object Security.AccessControl.FileSystemAccessRule('Administrators', 'FullControl', 'ContainerInherit,ObjectInherit', 'None', 'Allow')))
Set-Acl -Path $dir -AclObject $acl
Restart-Service -Name '@PROD@Agent' -ErrorAction SilentlyContinue
Write-Output "@PROD@ configuration installed to $dir"
"#,
        &[("BLOB", &blob), ("DIR", &dir), ("PROD", &prod)],
    ));
    Draft {
        content: c,
        purpose: format!("writes the {prod} agent's configuration, embedded as a base64 JSON blob, into {dir}"),
        steps: vec![
            format!("decodes the embedded base64 string with [Convert]::FromBase64String into JSON naming the server {server} and tenant {tenant}"),
            "validates the JSON with ConvertFrom-Json and writes it to agent.json".into(),
            "restricts the folder ACL to SYSTEM and Administrators with Set-Acl".into(),
            format!("restarts the {prod}Agent service"),
        ],
        effects: vec!["The base64 encoding only protects the JSON from formatting damage; the decoded data is a plain configuration, never executed.".into()],
        behaviours: vec!["Installs an agent configuration".into()],
        iocs: vec![dir, "FromBase64String".into(), format!("{prod}Agent")],
    }
}

fn patch_inventory(r: &mut R) -> Draft {
    let share = format!("\\\\{}\\inventory$", names::internal_host(r));
    let mut c = header(
        r,
        "Collect installed updates and software for the CMDB",
        &[("string", "OutShare", &format!("'{share}'"))],
    );
    c.push_str(&fill(
        r#"function Get-InstalledSoftware {
    $keys = 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall\*',
            'HKLM:\SOFTWARE\WOW6432Node\Microsoft\Windows\CurrentVersion\Uninstall\*'
    Get-ItemProperty $keys -ErrorAction SilentlyContinue |
        Where-Object DisplayName |
        Select-Object DisplayName, DisplayVersion, Publisher, InstallDate
}

$os = Get-CimInstance Win32_OperatingSystem
$record = [pscustomobject]@{
    Computer    = $env:COMPUTERNAME
    OS          = $os.Caption
    Build       = $os.BuildNumber
    LastBoot    = $os.LastBootUpTime
    Hotfixes    = @(Get-HotFix | Sort-Object InstalledOn -Descending | Select-Object HotFixID, InstalledOn)
    Software    = @(Get-InstalledSoftware)
    CollectedAt = (Get-Date).ToString('o')
}
$file = Join-Path $OutShare "$($env:COMPUTERNAME).json"
$record | ConvertTo-Json -Depth 4 | Set-Content -Path $file -Encoding UTF8
"#,
        &[],
    ));
    Draft {
        content: c,
        purpose: format!("collects installed hotfixes and software into a JSON inventory on {share}"),
        steps: vec![
            "reads the 64-bit and WOW6432Node Uninstall registry keys for installed programs".into(),
            "queries Win32_OperatingSystem for caption, build and last boot time and lists hotfixes with Get-HotFix".into(),
            format!("writes everything as COMPUTERNAME.json to {share} with ConvertTo-Json -Depth 4"),
        ],
        effects: vec!["It reads system state and writes one JSON file per machine to the inventory share.".into()],
        behaviours: vec!["Collects a software inventory".into()],
        iocs: vec![share, "Get-HotFix".into()],
    }
}
