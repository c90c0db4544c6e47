# certctl: carry out binding steps as ONE Microsoft.Web.Administration commit, retried with back-off.
# Input (a single-quoted JSON literal substituted below):
#   {"steps": [{"op": "add|replace|remove|ftp|settings", "site", "protocol", "information", "ssl_flags",
#               "thumbprint", "store", "config_only", "entry", "netsh"}], "attempts": 4, "backoff_ms": 500}
# An update is a replace: Bindings.Remove(binding, $true) (config only, the HTTP.sys entry stays for the
# other bindings on a shared endpoint) and Bindings.Add(information, hash, store, flags) with the flags kept.
# IIS re-creates the HTTP.sys entry on commit, which resets the entry's own settings (client certificate
# negotiation, CTL store, DS mapper, revocation checks): each "settings" step re-applies them afterwards
# with netsh http update sslcert (its parameter names are the same on every display language).
$ErrorActionPreference = 'Stop'
[Console]::OutputEncoding = [System.Text.Encoding]::UTF8
$in = ConvertFrom-Json __CERTCTL_INPUT__
Add-Type -Path (Join-Path $env:windir 'System32\inetsrv\Microsoft.Web.Administration.dll')

function ConvertTo-HashBytes([string]$hex) {
    $bytes = New-Object byte[] ($hex.Length / 2)
    for ($i = 0; $i -lt $bytes.Length; $i++) { $bytes[$i] = [Convert]::ToByte($hex.Substring(2 * $i, 2), 16) }
    return ,$bytes
}

function Find-Binding($site, [string]$protocol, [string]$information) {
    foreach ($b in $site.Bindings) {
        if ($b.Protocol -eq $protocol -and $b.BindingInformation -eq $information) { return $b }
    }
    throw ('CERTCTL-FATAL: site {0} has no {1} binding {2}' -f $site.Name, $protocol, $information)
}

$attempt = 0
while ($true) {
    $attempt++
    $sm = New-Object Microsoft.Web.Administration.ServerManager
    try {
        foreach ($step in $in.steps) {
            $site = $sm.Sites[$step.site]
            if ($null -eq $site) { throw ('CERTCTL-FATAL: no site named {0}' -f $step.site) }
            if ($step.op -eq 'add') {
                if ($step.thumbprint) {
                    $null = $site.Bindings.Add($step.information, (ConvertTo-HashBytes $step.thumbprint), $step.store,
                        [Microsoft.Web.Administration.SslFlags][int]$step.ssl_flags)
                } else {
                    # a Centralized Certificate Store binding has no hash: its certificate is a file on the share
                    $b = $site.Bindings.CreateElement('binding')
                    $b['protocol'] = $step.protocol
                    $b['bindingInformation'] = $step.information
                    $b['sslFlags'] = [int]$step.ssl_flags
                    $site.Bindings.Add($b)
                }
            } elseif ($step.op -eq 'replace') {
                $old = Find-Binding $site $step.protocol $step.information
                $flags = [int]$old.GetAttributeValue('sslFlags')
                $site.Bindings.Remove($old, $true)
                $null = $site.Bindings.Add($step.information, (ConvertTo-HashBytes $step.thumbprint), $step.store,
                    [Microsoft.Web.Administration.SslFlags]$flags)
            } elseif ($step.op -eq 'remove') {
                $old = Find-Binding $site $step.protocol $step.information
                $site.Bindings.Remove($old, [bool]$step.config_only)
            } elseif ($step.op -eq 'settings') {
                continue  # after the commit
            } elseif ($step.op -eq 'ftp') {
                $ssl = $site.GetChildElement('ftpServer').GetChildElement('security').GetChildElement('ssl')
                if ($step.thumbprint) {
                    $ssl['serverCertHash'] = $step.thumbprint
                    $ssl['serverCertStoreName'] = $step.store
                } else {
                    $ssl.GetAttribute('serverCertHash').Delete()
                    $ssl.GetAttribute('serverCertStoreName').Delete()
                }
            } else {
                throw ('CERTCTL-FATAL: unknown step {0}' -f $step.op)
            }
        }
        $sm.CommitChanges()
        break
    } catch {
        if ($_.Exception.Message -like '*CERTCTL-FATAL*' -or $attempt -ge [int]$in.attempts) { throw }
        Start-Sleep -Milliseconds ([int]$in.backoff_ms * [math]::Pow(2, $attempt - 1))
    } finally {
        $sm.Dispose()
    }
}

$settingsFailed = @()
foreach ($step in $in.steps) {
    if ($step.op -ne 'settings') { continue }
    $netshArgs = @('http', 'update', 'sslcert', [string]$step.entry, ('certhash={0}' -f $step.thumbprint),
        'appid={4dc3e181-e14b-4a21-b022-59fc669b0914}', ('certstorename={0}' -f $step.store)) + @($step.netsh)
    $out = & netsh.exe @netshArgs 2>&1 | Out-String
    if ($LASTEXITCODE -ne 0) { $settingsFailed += ('{0}: {1}' -f $step.entry, $out.Trim()) }
}

'<<<CERTCTL-JSON'
ConvertTo-Json -InputObject ([ordered]@{ ok = $true; attempts = $attempt; settings_failed = $settingsFailed }) -Compress
'CERTCTL-JSON>>>'
