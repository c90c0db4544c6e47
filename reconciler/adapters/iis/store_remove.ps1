# certctl: remove one certificate certctl installed (friendly name starting 'certctl:') from Cert:\LocalMachine\<store>.
# Input (a single-quoted JSON literal substituted below): {"store", "thumbprint"}
$ErrorActionPreference = 'Stop'
[Console]::OutputEncoding = [System.Text.Encoding]::UTF8
$in = ConvertFrom-Json __CERTCTL_INPUT__
$store = New-Object -TypeName System.Security.Cryptography.X509Certificates.X509Store -ArgumentList $in.store, 'LocalMachine'
$store.Open('ReadWrite')
$removed = $false
$reason = ''
try {
    $found = $store.Certificates.Find('FindByThumbprint', $in.thumbprint, $false)
    if ($found.Count -ge 1) {
        $c = $found[0]
        if ($c.FriendlyName.StartsWith('certctl:')) {
            $store.Remove($c)
            $removed = $true
        } else {
            $reason = 'not installed by certctl'
        }
    }
} finally {
    $store.Close()
}

'<<<CERTCTL-JSON'
ConvertTo-Json -InputObject ([ordered]@{ removed = $removed; reason = $reason }) -Compress
'CERTCTL-JSON>>>'
