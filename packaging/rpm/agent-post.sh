# cmdb-agent %post: the service user and state directory; an upgrade ($1 > 1) restarts a
# running agent. A fresh install starts nothing: enroll first (docs/OPERATIONS.md).
systemd-sysusers cmdb-agent.conf || :
systemd-tmpfiles --create cmdb-agent.conf || :
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
    if [ "$1" -gt 1 ]; then systemctl try-restart cmdb-agent.service || :; fi
fi
