//! The /proc/<pid>/mountinfo format (proc(5)): one mount per line,
//!
//! ```text
//! 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//! (1)(2)(3)   (4)   (5)      (6)      (7)   (8) (9)   (10)         (11)
//! ```
//!
//! with a variable number of optional fields (7) ended by a lone `-`. Paths and the mount
//! source are written with the kernel's octal escapes (`\040` for a space, `\011`, `\012`,
//! `\134`), which are decoded here. Parsing is pure; a malformed line is skipped with a
//! [`BadLine`] and the rest kept.

/// One mount, as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_id: u32,
    pub parent_id: u32,
    pub major: u32,
    pub minor: u32,
    /// The path inside the filesystem that is mounted ("/" unless a bind mount or subvolume).
    pub root: String,
    pub mount_point: String,
    /// Per-mount options (field 6).
    pub mount_options: String,
    pub fstype: String,
    /// The mount source ("/dev/sda1", "server:/export", "overlay", "none").
    pub source: String,
    /// Per-superblock options (field 11).
    pub super_options: String,
}

/// A mountinfo line that could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct BadLine {
    pub line: usize,
    pub reason: &'static str,
}

/// Parses mountinfo text. Blank lines are ignored.
pub fn parse_mountinfo(text: &str) -> (Vec<MountEntry>, Vec<BadLine>) {
    let mut entries = Vec::new();
    let mut bad = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line) {
            Ok(e) => entries.push(e),
            Err(reason) => bad.push(BadLine {
                line: n + 1,
                reason,
            }),
        }
    }
    (entries, bad)
}

fn parse_line(line: &str) -> Result<MountEntry, &'static str> {
    // The kernel separates fields with single spaces; empty fields cannot occur because
    // every field is escaped, so splitting on whitespace is exact.
    let fields: Vec<&str> = line.split_ascii_whitespace().collect();
    let sep = fields
        .iter()
        .position(|f| *f == "-")
        .ok_or("no \" - \" separator")?;
    if sep < 6 {
        return Err("fewer than 6 fields before the separator");
    }
    // fstype and source are the minimum a mount needs; super options are kept optional
    // (old kernels omit them for some filesystems).
    if fields.len() < sep + 3 {
        return Err("missing filesystem type or source after the separator");
    }
    let mount_id = fields[0].parse().map_err(|_| "mount id is not a number")?;
    let parent_id = fields[1].parse().map_err(|_| "parent id is not a number")?;
    let (major, minor) = fields[2]
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or("major:minor is not two numbers")?;
    let mount_point = unescape(fields[4]);
    if !mount_point.starts_with('/') {
        return Err("mount point is not an absolute path");
    }
    Ok(MountEntry {
        mount_id,
        parent_id,
        major,
        minor,
        root: unescape(fields[3]),
        mount_point,
        mount_options: fields[5].to_owned(),
        fstype: unescape(fields[sep + 1]),
        source: unescape(fields[sep + 2]),
        super_options: fields.get(sep + 3).map(|s| unescape(s)).unwrap_or_default(),
    })
}

/// Decodes the kernel's `\NNN` octal escapes (seq_file `mangle`); anything else passes
/// through unchanged, and bytes that do not form UTF-8 are replaced.
pub fn unescape(field: &str) -> String {
    if !field.contains('\\') {
        return field.to_owned();
    }
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..=i + 3].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            // \400 and above cannot be a byte; keep such text literally.
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: &str = "\
22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
28 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
90 28 8:17 / /media/alex/SD\\040CARD rw,nosuid,nodev,relatime shared:300 - vfat /dev/sdb1 rw,fmask=0022
91 28 0:45 / /srv/backup rw,relatime - nfs4 nas.example.lan:/export/backup rw,vers=4.2
";

    #[test]
    fn parses_real_lines_with_optional_fields_and_escapes() {
        let (e, bad) = parse_mountinfo(SAMPLE);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(e.len(), 4);
        assert_eq!(
            e[1],
            MountEntry {
                mount_id: 28,
                parent_id: 1,
                major: 254,
                minor: 1,
                root: "/".into(),
                mount_point: "/".into(),
                mount_options: "rw,relatime".into(),
                fstype: "ext4".into(),
                source: "/dev/vda1".into(),
                super_options: "rw,errors=remount-ro".into(),
            }
        );
        assert_eq!(e[2].mount_point, "/media/alex/SD CARD");
        assert_eq!(e[3].fstype, "nfs4");
        assert_eq!(e[3].source, "nas.example.lan:/export/backup");
    }

    #[test]
    fn malformed_lines_are_reported_and_skipped() {
        let text = "garbage\n\n1 2 3:4 / /x rw - ext4 /dev/a rw\nx 2 3:4 / /y rw - ext4 /dev/b rw\n1 2 3 / /z rw - ext4 /dev/c rw\n";
        let (e, bad) = parse_mountinfo(text);
        assert_eq!(e.len(), 1);
        assert_eq!(
            bad.iter().map(|b| b.line).collect::<Vec<_>>(),
            vec![1, 4, 5]
        );
    }

    #[test]
    fn escapes_decode() {
        assert_eq!(unescape(r"a\040b\011c\012d\134e"), "a b\tc\nd\\e");
        assert_eq!(unescape(r"trail\04"), r"trail\04");
        assert_eq!(unescape(r"\777x"), r"\777x");
        assert_eq!(unescape("plain"), "plain");
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC*") {
            let _ = parse_mountinfo(&s);
        }

        #[test]
        fn never_panics_on_mountinfo_like_text(
            lines in proptest::collection::vec(
                "[0-9]{1,3} [0-9]{1,3} [0-9]{1,3}:[0-9]{1,3} [/a-z\\\\0-7]{1,8} [/a-z\\\\0-7]{1,8} [a-z,]{0,8}( [a-z:0-9]{1,6}){0,2} (- )?[a-z0-9]{0,5} [/a-z]{0,5} [a-z,=]{0,8}",
                0..8)
        ) {
            let text = lines.join("\n");
            let (e, bad) = parse_mountinfo(&text);
            prop_assert_eq!(e.len() + bad.len(), lines.iter().filter(|l| !l.trim().is_empty()).count());
        }

        #[test]
        fn escaping_round_trips(path in "/[ -~\\t\\n]{0,20}") {
            // What the kernel's mangle() would print for `path`.
            let mut escaped = String::new();
            for c in path.chars() {
                match c {
                    ' ' | '\t' | '\n' | '\\' => escaped.push_str(&format!("\\{:03o}", c as u32)),
                    c => escaped.push(c),
                }
            }
            let line = format!("1 0 8:1 / {escaped} rw - ext4 /dev/sda1 rw");
            let (e, bad) = parse_mountinfo(&line);
            prop_assert!(bad.is_empty());
            prop_assert_eq!(&e[0].mount_point, &path);
        }

        #[test]
        fn good_lines_survive_bad_neighbours(junk in "[^\\n]{0,40}") {
            let text = format!("{junk}\n5 1 8:1 / /data rw - xfs /dev/sdb1 rw\n{junk}\n");
            let (e, _) = parse_mountinfo(&text);
            prop_assert!(e.iter().any(|m| m.mount_point == "/data" && m.fstype == "xfs"));
        }
    }
}
