# %postun: forget the removed unit. State and data directories stay (rpm never removes them).
if [ -d /run/systemd/system ]; then systemctl daemon-reload || :; fi
