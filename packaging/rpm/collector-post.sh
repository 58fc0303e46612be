# cmdb-collector %post: the service user and data directory, the configuration readable by
# the service only (it may hold secrets); an upgrade ($1 > 1) restarts a running collector.
# A fresh install starts nothing: create the PKI first (docs/OPERATIONS.md).
systemd-sysusers cmdb-collector.conf || :
systemd-tmpfiles --create cmdb-collector.conf || :
chgrp cmdb-collector /etc/cmdb/collector.toml && chmod 0640 /etc/cmdb/collector.toml || :
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
    if [ "$1" -gt 1 ]; then systemctl try-restart cmdb-collector.service || :; fi
fi
