# certctl: read an IIS host in ONE call and print it as JSON between markers.
# Input (a single-quoted JSON literal substituted below): {"stores": ["My", "WebHosting"]}
# Secrets: the CCS share password, if any, arrives in $env:CERTCTL_CCS_PASSWORD.
$ErrorActionPreference = 'Stop'
[Console]::OutputEncoding = [System.Text.Encoding]::UTF8
$in = ConvertFrom-Json __CERTCTL_INPUT__
Add-Type -Path (Join-Path $env:windir 'System32\inetsrv\Microsoft.Web.Administration.dll')

$inetstp = Get-ItemProperty -Path 'HKLM:\SOFTWARE\Microsoft\InetStp' -ErrorAction SilentlyContinue
$result = [ordered]@{
    iis_version       = $(if ($inetstp) { '{0}.{1}' -f $inetstp.MajorVersion, $inetstp.MinorVersion } else { $null })
    sites             = @()
    site_defaults_ftp = $null
    httpsys_reg       = ''
    sslcert           = ''
    stores            = @()
    ccs               = $null
}

function Get-FtpSsl($element) {
    try {
        $ssl = $element.GetChildElement('ftpServer').GetChildElement('security').GetChildElement('ssl')
        return [ordered]@{ hash = [string]$ssl['serverCertHash']; store = [string]$ssl['serverCertStoreName'] }
    } catch {
        return $null
    }
}

$sm = New-Object Microsoft.Web.Administration.ServerManager
try {
    $sites = @()
    foreach ($site in $sm.Sites) {
        $state = 'Unknown'
        try { $state = [string]$site.State } catch { $state = 'Unknown' }
        $physicalPath = ''
        $app = $site.Applications['/']
        if ($null -ne $app) {
            $vdir = $app.VirtualDirectories['/']
            if ($null -ne $vdir) { $physicalPath = $vdir.PhysicalPath }
        }
        $bindings = @()
        foreach ($b in $site.Bindings) {
            $flags = 0
            try { $flags = [int]$b.GetAttributeValue('sslFlags') } catch { $flags = 0 }
            $hash = $null
            if ($b.Protocol -eq 'https' -and $null -ne $b.CertificateHash) {
                $hash = ($b.CertificateHash | ForEach-Object { $_.ToString('X2') }) -join ''
            }
            $bindings += [ordered]@{
                protocol          = $b.Protocol
                information       = $b.BindingInformation
                ssl_flags         = $flags
                certificate_hash  = $hash
                certificate_store = $b.CertificateStoreName
            }
        }
        $sites += [ordered]@{
            name          = $site.Name
            id            = $site.Id
            state         = $state
            physical_path = $physicalPath
            bindings      = $bindings
            ftp           = (Get-FtpSsl $site)
        }
    }
    $result.sites = $sites
    $result.site_defaults_ftp = Get-FtpSsl $sm.SiteDefaults
} finally {
    $sm.Dispose()
}

# The HTTP.sys SSL table as a registry export (value names and data read the same on every display
# language); netsh's text (English labels only) is kept as the fallback for when the export fails.
$regFile = [System.IO.Path]::GetTempFileName()
try {
    $null = & reg.exe export 'HKLM\SYSTEM\CurrentControlSet\Services\HTTP\Parameters' $regFile /y 2>&1
    if ($LASTEXITCODE -eq 0) { $result.httpsys_reg = Get-Content -LiteralPath $regFile -Raw -Encoding Unicode }
} finally {
    Remove-Item -LiteralPath $regFile -Force -ErrorAction SilentlyContinue
}
$result.sslcert = (& netsh.exe http show sslcert | Out-String)

$stores = @()
foreach ($name in $in.stores) {
    $path = 'Cert:\LocalMachine\' + $name
    if (-not (Test-Path -LiteralPath $path)) { continue }
    $certs = @()
    foreach ($c in Get-ChildItem -LiteralPath $path) {
        $certs += [ordered]@{
            thumbprint      = $c.Thumbprint
            friendly_name   = $c.FriendlyName
            has_private_key = $c.HasPrivateKey
            raw             = [Convert]::ToBase64String($c.RawData)
        }
    }
    $stores += [ordered]@{ name = $name; certs = $certs }
}
$result.stores = $stores

$ccs = Get-ItemProperty -Path 'HKLM:\SOFTWARE\Microsoft\IIS\CentralCertProvider' -ErrorAction SilentlyContinue
if ($null -ne $ccs -and $ccs.Enabled -eq 1 -and $ccs.CertStoreLocation) {
    $files = @()
    foreach ($f in Get-ChildItem -LiteralPath $ccs.CertStoreLocation -Filter '*.pfx' -File -ErrorAction SilentlyContinue) {
        $tp = ''
        try {
            $x = New-Object -TypeName System.Security.Cryptography.X509Certificates.X509Certificate2 -ArgumentList $f.FullName, ([string]$env:CERTCTL_CCS_PASSWORD)
            $tp = $x.Thumbprint
        } catch { $tp = '' }
        $files += [ordered]@{ name = $f.Name; thumbprint = $tp }
    }
    $result.ccs = [ordered]@{ path = $ccs.CertStoreLocation; files = $files }
}

'<<<CERTCTL-JSON'
ConvertTo-Json -InputObject $result -Depth 8 -Compress
'CERTCTL-JSON>>>'
