//! Windows Firewall rule model (platform independent, unit-tested on Linux).
