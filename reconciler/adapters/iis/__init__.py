"""IIS hosts: applicationHost.config, the HTTP.sys SSL table and the Windows certificate store.

- ``appconfig``: lossless applicationHost.config parsing and editing
- ``httpsys``: httpsys.json, ``netsh http show sslcert`` rendering and parsing, binding → entry
- ``changes``: what a list of BindingChange does (pure; shared by both backends)
- ``emulated``: ``EmulatedHost`` — one folder per machine (docs/iis.md, "The emulated machine")
- ``windows``: ``WindowsHost`` — the real server through PowerShell and Microsoft.Web.Administration
"""
