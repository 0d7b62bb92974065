"""The systemd unit and launchd plist templates that `transcache install` fills in
(`string.Template`, so each reads as the file it becomes). Shipped in the wheel as the
`transcache.service` package (pyproject.toml maps it to this directory)."""
