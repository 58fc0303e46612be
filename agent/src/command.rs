//! Running an external program (rpm, systemctl) without ever hanging or flooding the agent:
//! every run has a timeout after which the child is killed, and its output is capped.

use std::io::Read;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// A failed external command.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program is not installed.
    #[error("{0}: not found")]
    NotFound(String),
    /// The program could not be started.
    #[error("{program}: cannot start: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// The program ran past its timeout and was killed.
    #[error("{program}: timed out after {timeout:?} and was killed")]
    Timeout { program: String, timeout: Duration },
    /// The program wrote more than the output cap; it was killed.
    #[error("{program}: output exceeded {cap} bytes")]
    TooMuchOutput { program: String, cap: usize },
    /// The program exited unsuccessfully.
    #[error("{program}: exited with {status}: {stderr}")]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },
}

/// The captured result of a successful run.
#[derive(Debug)]
pub struct Output {
    pub stdout: Vec<u8>,
}

/// Runs `program args…` with a clean locale, no stdin, a timeout and an output cap.
pub fn run(
    program: &str,
    args: &[&str],
    timeout: Duration,
    cap: usize,
) -> Result<Output, CommandError> {
    let mut child = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                CommandError::NotFound(program.to_owned())
            } else {
                CommandError::Spawn {
                    program: program.to_owned(),
                    source: e,
                }
            }
        })?;

    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out_reader = thread::spawn(move || read_capped(stdout, cap));
    let err_reader = thread::spawn(move || read_capped(stderr, 4096));

    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CommandError::Timeout {
                    program: program.to_owned(),
                    timeout,
                });
            }
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                let _ = child.kill();
                return Err(CommandError::Spawn {
                    program: program.to_owned(),
                    source: e,
                });
            }
        }
    };
    let (stdout, overflow) = out_reader.join().unwrap_or_default();
    let (stderr, _) = err_reader.join().unwrap_or_default();
    if overflow {
        return Err(CommandError::TooMuchOutput {
            program: program.to_owned(),
            cap,
        });
    }
    if !status.success() {
        return Err(CommandError::Failed {
            program: program.to_owned(),
            status: status.to_string(),
            stderr: String::from_utf8_lossy(&stderr).trim().to_owned(),
        });
    }
    Ok(Output { stdout })
}

/// Reads up to `cap` bytes, then drains the rest so the child never blocks on a full pipe.
fn read_capped<R: Read>(r: Option<R>, cap: usize) -> (Vec<u8>, bool) {
    let Some(mut r) = r else {
        return (Vec::new(), false);
    };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut overflow = false;
    loop {
        match r.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if buf.len() + n > cap {
                    overflow = true;
                } else {
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }
    (buf, overflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output() {
        let out = run("sh", &["-c", "echo hello"], Duration::from_secs(5), 1024).unwrap();
        assert_eq!(out.stdout, b"hello\n");
    }

    #[test]
    fn kills_on_timeout() {
        let t = Instant::now();
        let err = run("sleep", &["10"], Duration::from_millis(200), 1024).unwrap_err();
        assert!(matches!(err, CommandError::Timeout { .. }), "{err}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn caps_output_and_reports_failures_and_absence() {
        let err = run(
            "sh",
            &["-c", "yes | head -c 100000"],
            Duration::from_secs(5),
            1000,
        )
        .unwrap_err();
        assert!(matches!(err, CommandError::TooMuchOutput { .. }), "{err}");
        let err = run(
            "sh",
            &["-c", "echo bad >&2; exit 3"],
            Duration::from_secs(5),
            1000,
        )
        .unwrap_err();
        assert!(err.to_string().contains("bad"), "{err}");
        let err = run("no-such-program-cmdb", &[], Duration::from_secs(5), 10).unwrap_err();
        assert!(matches!(err, CommandError::NotFound(_)));
    }
}
