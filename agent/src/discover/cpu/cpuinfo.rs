//! The /proc/cpuinfo format: blocks of `key<TAB>: value` lines, one per logical processor,
//! separated by blank lines (x86 and arm64 layouts; blocks without a numeric `processor`,
//! such as arm's trailing `Hardware` block, are not processors). Pure parsing: only the
//! fields discovery uses are kept, and a malformed value is skipped with a warning.

/// One logical processor's fields.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Processor {
    pub index: u32,
    pub model_name: Option<String>,
    pub vendor_id: Option<String>,
    pub physical_id: Option<u32>,
    pub core_id: Option<u32>,
    pub mhz: Option<f64>,
    /// "cache size" in bytes.
    pub cache_bytes: Option<u64>,
    pub microcode: Option<String>,
    /// "vmx" (Intel VT-x) or "svm" (AMD-V) when the flags offer hardware virtualization.
    pub virtualization: Option<&'static str>,
    /// arm64 "CPU implementer" and "CPU part".
    pub implementer: Option<u32>,
    pub part: Option<u32>,
}

/// Parses cpuinfo text into (processors, warnings "line N: reason").
pub fn parse(text: &str) -> (Vec<Processor>, Vec<String>) {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    let mut current: Option<Processor> = None;
    let mut in_block = false;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            out.extend(current.take());
            in_block = false;
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            warnings.push(format!("line {}: no ':' separator", n + 1));
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        if key == "processor" && !in_block {
            in_block = true;
            match value.parse::<u32>() {
                Ok(index) => {
                    current = Some(Processor {
                        index,
                        ..Processor::default()
                    });
                }
                Err(_) => warnings.push(format!(
                    "line {}: processor {value:?} is not a number",
                    n + 1
                )),
            }
            continue;
        }
        in_block = true;
        let Some(p) = current.as_mut() else {
            continue;
        };
        let mut number = |v: &str, parse: fn(&str) -> Option<u32>| {
            let r = parse(v);
            if r.is_none() {
                warnings.push(format!("line {}: {key} {v:?} is not a number", n + 1));
            }
            r
        };
        match key {
            "model name" => p.model_name = non_empty(value),
            "vendor_id" => p.vendor_id = non_empty(value),
            "physical id" => p.physical_id = number(value, |v| v.parse().ok()),
            "core id" => p.core_id = number(value, |v| v.parse().ok()),
            "CPU implementer" => p.implementer = number(value, parse_hex),
            "CPU part" => p.part = number(value, parse_hex),
            "cpu MHz" => match value.parse::<f64>() {
                Ok(v) if v.is_finite() && v > 0.0 => p.mhz = Some(v),
                _ => warnings.push(format!("line {}: cpu MHz {value:?} is not a number", n + 1)),
            },
            "cache size" => p.cache_bytes = parse_size(value),
            "microcode" => p.microcode = non_empty(value),
            "flags" => {
                p.virtualization = value.split_whitespace().find_map(|f| match f {
                    "vmx" => Some("vmx"),
                    "svm" => Some("svm"),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    out.extend(current);
    (out, warnings)
}

fn non_empty(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_owned())
}

fn parse_hex(v: &str) -> Option<u32> {
    let digits = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X"))?;
    u32::from_str_radix(digits, 16).ok()
}

/// "28160 KB" → bytes.
fn parse_size(v: &str) -> Option<u64> {
    let mut parts = v.split_whitespace();
    let n: u64 = parts.next()?.parse().ok()?;
    let unit = match parts.next().map(str::to_ascii_uppercase).as_deref() {
        None | Some("B") => 1,
        Some("KB" | "K") => 1024,
        Some("MB" | "M") => 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// The vendor name of an arm64 "CPU implementer" code.
pub fn arm_implementer(code: u32) -> Option<&'static str> {
    Some(match code {
        0x41 => "ARM",
        0x42 => "Broadcom",
        0x43 => "Cavium",
        0x46 => "Fujitsu",
        0x48 => "HiSilicon",
        0x4e => "NVIDIA",
        0x50 => "APM",
        0x51 => "Qualcomm",
        0x53 => "Samsung",
        0x56 => "Marvell",
        0x61 => "Apple",
        0x69 => "Intel",
        0x6d => "Microsoft",
        0xc0 => "Ampere",
        _ => return None,
    })
}

/// The model name of common arm64 (implementer, part) pairs.
pub fn arm_part(implementer: u32, part: u32) -> Option<&'static str> {
    Some(match (implementer, part) {
        (0x41, 0xd03) => "Cortex-A53",
        (0x41, 0xd04) => "Cortex-A35",
        (0x41, 0xd05) => "Cortex-A55",
        (0x41, 0xd07) => "Cortex-A57",
        (0x41, 0xd08) => "Cortex-A72",
        (0x41, 0xd09) => "Cortex-A73",
        (0x41, 0xd0a) => "Cortex-A75",
        (0x41, 0xd0b) => "Cortex-A76",
        (0x41, 0xd0c) => "Neoverse-N1",
        (0x41, 0xd0d) => "Cortex-A77",
        (0x41, 0xd40) => "Neoverse-V1",
        (0x41, 0xd41) => "Cortex-A78",
        (0x41, 0xd49) => "Neoverse-N2",
        (0x41, 0xd4f) => "Neoverse-V2",
        (0xc0, 0xac3) => "Ampere-1",
        (0xc0, 0xac4) => "Ampere-1a",
        (0x61, 0x022) => "M1",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const X86: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 85\n\
model name\t: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz\nmicrocode\t: 0x5003604\n\
cpu MHz\t\t: 2100.000\ncache size\t: 28160 KB\nphysical id\t: 1\nsiblings\t: 40\n\
core id\t\t: 4\ncpu cores\t: 20\nflags\t\t: fpu vme vmx smx est\npower management:\n\n\
processor\t: 1\nvendor_id\t: GenuineIntel\nphysical id\t: 0\ncore id\t\t: 0\n\n";

    const ARM: &str = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm\n\
CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\n\
CPU revision\t: 1\n\nprocessor\t: 1\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n\n\
Hardware\t: some board\n";

    #[test]
    fn parses_x86() {
        let (p, w) = parse(X86);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(p.len(), 2);
        assert_eq!(
            p[0].model_name.as_deref(),
            Some("Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz")
        );
        assert_eq!(p[0].physical_id, Some(1));
        assert_eq!(p[0].core_id, Some(4));
        assert_eq!(p[0].mhz, Some(2100.0));
        assert_eq!(p[0].cache_bytes, Some(28160 * 1024));
        assert_eq!(p[0].virtualization, Some("vmx"));
        assert_eq!(p[0].microcode.as_deref(), Some("0x5003604"));
        assert_eq!(p[1].index, 1);
        assert_eq!(p[1].virtualization, None);
    }

    #[test]
    fn parses_arm64() {
        let (p, w) = parse(ARM);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(p.len(), 2, "the Hardware block is not a processor");
        assert_eq!(p[0].implementer.and_then(arm_implementer), Some("ARM"));
        assert_eq!(arm_part(0x41, p[0].part.unwrap()), Some("Neoverse-N1"));
        assert_eq!(p[0].physical_id, None);
    }

    #[test]
    fn malformed_values_are_warned_and_skipped() {
        let (p, w) = parse(
            "processor : x\nmodel name : A\n\nprocessor : 3\ncore id : y\ngarbage\ncpu MHz : nan\n",
        );
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].index, 3);
        assert_eq!(p[0].core_id, None);
        assert_eq!(w.len(), 4, "{w:?}");
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,600}") {
            let (p, _) = parse(&text);
            prop_assert!(p.len() <= text.lines().count());
        }

        #[test]
        fn generated_blocks_parse(n in 1usize..64, cores in 1u32..16) {
            let mut text = String::new();
            for i in 0..n {
                text.push_str(&format!(
                    "processor\t: {i}\nphysical id\t: {}\ncore id\t\t: {}\n\n",
                    i as u32 / cores, i as u32 % cores
                ));
            }
            let (p, w) = parse(&text);
            prop_assert!(w.is_empty());
            prop_assert_eq!(p.len(), n);
        }
    }
}
