# cmdb-agent %preun: stop the agent when the package is erased ($1 = 0), not on upgrade.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl disable --now cmdb-agent.service || :
fi
