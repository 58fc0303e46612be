//! SMBIOS table parsing (stub).
