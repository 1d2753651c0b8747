//! Firewall backends behind one facade: nftables (netlink) on Linux, Windows Firewall, an exec
//! backend with argv templates, and `none`.
