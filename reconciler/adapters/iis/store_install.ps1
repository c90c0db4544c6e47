# certctl: import a PFX into Cert:\LocalMachine\<store> (MachineKeySet, PersistKeySet; not Exportable),
# set the friendly-name marker, put intermediates into CA, then reopen the store and check the key.
# Input (a single-quoted JSON literal substituted below): {"store", "thumbprint", "friendly_name", "pfx" (base64)}
# Secret: the PFX password arrives in $env:CERTCTL_PFX_PASSWORD, never on a command line.
$ErrorActionPreference = 'Stop'
[Console]::OutputEncoding = [System.Text.Encoding]::UTF8
$in = ConvertFrom-Json __CERTCTL_INPUT__
$X509 = 'System.Security.Cryptography.X509Certificates'
$flags = [System.Security.Cryptography.X509Certificates.X509KeyStorageFlags]'MachineKeySet, PersistKeySet'
$collection = New-Object -TypeName "$X509.X509Certificate2Collection"
$collection.Import([Convert]::FromBase64String($in.pfx), $env:CERTCTL_PFX_PASSWORD, $flags)

$store = New-Object -TypeName "$X509.X509Store" -ArgumentList $in.store, 'LocalMachine'
$ca = New-Object -TypeName "$X509.X509Store" -ArgumentList 'CA', 'LocalMachine'
$store.Open('ReadWrite')
$ca.Open('ReadWrite')
try {
    foreach ($c in $collection) {
        if ($c.HasPrivateKey) {
            $c.FriendlyName = $in.friendly_name
            $store.Add($c)
        } elseif ($c.Subject -ne $c.Issuer) {
            $ca.Add($c)
        }
    }
} finally {
    $store.Close()
    $ca.Close()
}

# reopen the store and check the private key is there
$ok = $false
$reason = 'the certificate is not in the store after the import'
$check = New-Object -TypeName "$X509.X509Store" -ArgumentList $in.store, 'LocalMachine'
$check.Open('ReadWrite')
try {
    $found = $check.Certificates.Find('FindByThumbprint', $in.thumbprint, $false)
    if ($found.Count -ge 1) {
        $c = $found[0]
        $key = $null
        if ($c.HasPrivateKey) {
            $key = [System.Security.Cryptography.X509Certificates.RSACertificateExtensions]::GetRSAPrivateKey($c)
            if ($null -eq $key) { $key = [System.Security.Cryptography.X509Certificates.ECDsaCertificateExtensions]::GetECDsaPrivateKey($c) }
        }
        if ($null -eq $key) {
            $reason = 'the private key is not there'
            $check.Remove($c)
        } else {
            $ok = $true
            $reason = ''
        }
    }
} finally {
    $check.Close()
}

'<<<CERTCTL-JSON'
ConvertTo-Json -InputObject ([ordered]@{ ok = $ok; reason = $reason; thumbprint = $in.thumbprint }) -Compress
'CERTCTL-JSON>>>'
