//! The web console in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`) driven over the W3C WebDriver protocol against a real collector fed by
//! a real agent. The test logs in, finds the host, opens its CI pages, edits a watched file
//! and acknowledges the incident that follows through the UI, opens every other page, and
//! checks that a viewer sees no mutating control. It asserts on visible text and saves a
//! PNG screenshot of each step under `target/console-screenshots/`.
//!
//! Without Chromium the test prints why and passes, except under CI (`CI=true`), where
//! `.ci/run` installs the packages and their absence is a failure. Every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Agent, AgentSpec, Collector, copy_tree, fixtures, free_port, wait_for};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The key WebDriver uses for element references.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long a page may take to show what the test waits for.
const PAGE_WAIT: Duration = Duration::from_secs(20);

// === a minimal WebDriver client ===

struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::blocking::Client,
    shots: PathBuf,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a headless session.
    fn start(shots: PathBuf) -> Browser {
        let port = free_port();
        let log =
            std::fs::File::create(std::env::temp_dir().join(format!("chromedriver-{port}.log")))
                .unwrap();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .no_proxy()
            .build()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let mut b = Browser {
            driver,
            base,
            session: String::new(),
            http,
            shots,
        };
        wait_for(Duration::from_secs(20), "chromedriver ready", || {
            b.http
                .get(format!("{}/status", b.base))
                .send()
                .ok()
                .and_then(|r| r.json::<Value>().ok())
                .filter(|v| v["value"]["ready"] == true)
        });
        let mut args = vec![
            "--headless=new",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1400,1000",
            "--no-first-run",
        ];
        // Chromium's sandbox refuses to start as root.
        if rustix::process::geteuid().is_root() {
            args.push("--no-sandbox");
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args}
        }}});
        let v = b.post("/session", &caps);
        b.session = v["sessionId"].as_str().expect("session id").to_owned();
        b
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Value {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().unwrap();
        let status = resp.status();
        let v: Value = resp.json().unwrap_or(Value::Null);
        assert!(
            status.is_success(),
            "WebDriver {method} {path}: {status} {v}"
        );
        v["value"].clone()
    }

    fn post(&self, path: &str, body: &Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body))
    }

    fn s(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    fn go(&self, url: &str) {
        self.post(&self.s("/url"), &json!({ "url": url }));
    }

    fn refresh(&self) {
        self.post(&self.s("/refresh"), &json!({}));
    }

    fn script(&self, script: &str) -> Value {
        self.post(
            &self.s("/execute/sync"),
            &json!({"script": script, "args": []}),
        )
    }

    /// The visible text of the page body.
    fn text(&self) -> String {
        self.script("return document.body.innerText;")
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Elements matching a CSS selector (none is not an error).
    fn find_all(&self, css: &str) -> Vec<String> {
        let v = self.post(
            &self.s("/elements"),
            &json!({"using": "css selector", "value": css}),
        );
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn find(&self, css: &str) -> String {
        wait_for(PAGE_WAIT, &format!("element {css}"), || {
            self.find_all(css).into_iter().next()
        })
    }

    /// The link whose text is exactly `text`, once it shows.
    fn link(&self, text: &str) -> String {
        wait_for(PAGE_WAIT, &format!("link {text:?}"), || {
            let v = self.post(
                &self.s("/elements"),
                &json!({"using": "link text", "value": text}),
            );
            v.as_array()?.first()?[ELEMENT].as_str().map(str::to_owned)
        })
    }

    fn click(&self, element: &str) {
        self.post(&self.s(&format!("/element/{element}/click")), &json!({}));
    }

    fn type_into(&self, element: &str, text: &str) {
        self.post(
            &self.s(&format!("/element/{element}/value")),
            &json!({ "text": text }),
        );
    }

    /// Waits until the page shows every one of `needles` and has finished loading.
    fn wait_text(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            let text = self.text();
            if !text.contains("Loading…") && needles.iter().all(|n| text.contains(n)) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "the page never showed {needles:?}; it shows:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Saves a PNG of the window as `<step>.png`.
    fn screenshot(&self, step: &str) -> PathBuf {
        let b64 = self.call(reqwest::Method::GET, &self.s("/screenshot"), None);
        let png = base64_decode(b64.as_str().unwrap()).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a screenshot is a PNG");
        let path = self.shots.join(format!("{step}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    fn login(&self, api: &str, token: &str) {
        self.go(&format!("{api}/#/fleet"));
        let field = self.find("#token");
        self.post(&self.s(&format!("/element/{field}/clear")), &json!({}));
        self.type_into(&field, token);
        self.click(&self.find("#login"));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self
                .http
                .delete(format!("{}/session/{}", self.base, self.session))
                .send();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (RFC 4648, padded), as WebDriver sends screenshots.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[test]
fn base64_decodes_what_webdriver_sends() {
    assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
    assert_eq!(base64_decode("aGk=").unwrap(), b"hi");
    assert_eq!(base64_decode("YWJj").unwrap(), b"abc");
    assert_eq!(base64_decode("iVBORw0KGgo=").unwrap(), b"\x89PNG\r\n\x1a\n");
    assert!(base64_decode("a*b=").is_none());
}

// === the scenario ===

/// Whether the browser can run here; `None` means skip (outside CI only).
fn browser_available() -> bool {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "CI=true but {missing:?} are missing: .ci/run installs chromium and chromium-driver"
    );
    eprintln!(
        "SKIPPED: the console browser test needs {missing:?} \
         (apt-get install -y --no-install-recommends chromium chromium-driver)"
    );
    false
}

fn screenshots_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let dir = target.join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_console_shows_the_host_its_incident_and_every_page_to_the_right_roles() {
    if !browser_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("host");
    std::fs::create_dir_all(&root).unwrap();
    copy_tree(&fixtures().join("debian12"), &root);
    let watched = root.join("etc/cmdb-test");
    std::fs::create_dir_all(&watched).unwrap();
    std::fs::write(watched.join("app.conf"), "setting = 1\n").unwrap();

    let c = Collector::start_with(
        &tmp.path().join("collector"),
        "[agents]\nheartbeat = \"1s\"\n",
    );
    let mut agent = Agent::enroll(
        &c,
        &tmp.path().join("agent"),
        &AgentSpec {
            host_root: root.clone(),
            watch: vec!["/etc/cmdb-test/*.conf".into()],
            extra: String::new(),
        },
    );
    agent.start();
    // Changes are judged once the host's initial baseline exists and holds the file.
    let host_id = wait_for(Duration::from_secs(30), "initial baseline", || {
        c.call("GET", "/api/v1/baselines", None)["items"]
            .as_array()?
            .iter()
            .find(|b| b["initial"] == true && b["items"].as_u64().unwrap_or(0) > 0)
            .and_then(|b| b["scope"][0].as_str())
            .and_then(|s| s.strip_prefix("host=").map(str::to_owned))
    });
    wait_for(Duration::from_secs(20), "the watched file's CI", || {
        (!c.cis(&format!("class=file&host={host_id}")).is_empty()).then_some(())
    });
    let hostname = c.agents()[0]["hostname"].as_str().unwrap().to_owned();
    let operator = c.api_token("olivia", "operator");
    let viewer = c.api_token("victor", "viewer");
    let api = c.api();

    let b = Browser::start(screenshots_dir());

    // A wrong token is refused on the login form.
    b.login(&api, "not-a-token");
    b.wait_text(&["That token is not valid."]);
    b.screenshot("00-login-refused");

    // Log in as the operator: the fleet overview lists this host, up.
    b.login(&api, &operator);
    let text = b.wait_text(&["Fleet overview", &hostname, "olivia", "operator"]);
    assert!(text.contains("up"), "{text}");
    b.screenshot("01-fleet");

    // The host's own CI page, from the fleet.
    b.click(&b.link(&hostname));
    b.wait_text(&[
        "host ",
        &host_id,
        "Attributes",
        "Version history",
        "Relations",
        "Impact",
    ]);
    b.screenshot("02-host-ci");

    // The CI browser, filtered to this host's files, then the watched file's page.
    b.go(&format!("{api}/#/cis?class=file&host={hostname}"));
    b.wait_text(&["Configuration items", "/etc/cmdb-test/app.conf"]);
    b.screenshot("03-ci-browser");
    b.click(&b.link("/etc/cmdb-test/app.conf"));
    let text = b.wait_text(&[
        "file /etc/cmdb-test/app.conf",
        "sha256",
        "Version history (1)",
    ]);
    assert!(
        text.contains("+ sha256 = "),
        "the first version lists its attributes: {text}"
    );

    // An unauthorised edit of the watched file: the incident shows on the incidents page.
    std::fs::write(watched.join("app.conf"), "setting = tampered\n").unwrap();
    b.go(&format!("{api}/#/incidents?open=true"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let number = loop {
        let text = b.wait_text(&["Incidents"]);
        if let Some(at) = text.find("INC0") {
            break text[at..at + 10].to_owned();
        }
        assert!(Instant::now() < deadline, "no incident appeared:\n{text}");
        std::thread::sleep(Duration::from_millis(500));
        b.refresh();
    };
    let inc = c.call("GET", &format!("/api/v1/incidents/{number}"), None);
    assert_eq!(inc["category"], "unauthorized-change");
    b.wait_text(&[&number, "new", "unauthorized-change", "debian12-vm"]);
    b.screenshot("04-incidents");

    // Its detail page, then acknowledge it through the UI.
    b.click(&b.link(&number));
    b.wait_text(&[
        &number,
        "Timeline",
        "opened",
        "Acknowledge",
        "Resolve",
        "/etc/cmdb-test/app.conf",
    ]);
    b.screenshot("05-incident");
    b.click(&b.find("#ack"));
    wait_for(PAGE_WAIT, "the incident acknowledged", || {
        (c.call("GET", &format!("/api/v1/incidents/{number}"), None)["state"] == "acknowledged")
            .then_some(())
    });
    b.wait_text(&["acknowledged by olivia"]);
    assert!(b.find_all("#ack").is_empty(), "no second acknowledge");
    b.screenshot("06-incident-acknowledged");

    // The file CI's page now shows the second version with its diff.
    let ci_id = inc["ci_id"].as_str().unwrap();
    b.go(&format!("{api}/#/ci/{ci_id}"));
    b.wait_text(&["Version history (2)", "~ sha256: "]);
    b.screenshot("07-ci-history");

    // Capacity and licenses: data, or a clear "not available" on a collector without them.
    b.go(&format!("{api}/#/capacity"));
    let text = b.wait_text(&["Capacity"]);
    assert!(
        text.contains("not available on this collector") || text.contains("At risk"),
        "{text}"
    );
    b.screenshot("08-capacity");
    b.go(&format!("{api}/#/licenses"));
    let text = b.wait_text(&["License position"]);
    assert!(
        text.contains("not available on this collector") || text.contains("Software inventory"),
        "{text}"
    );
    b.screenshot("09-licenses");

    // Every other page loads without an error.
    for (step, page, heading) in [
        ("10-changes", "changes", "Forward schedule of change"),
        ("11-drift", "drift", "Drift per day"),
        ("12-baselines", "baselines", "initial "),
        ("13-availability", "availability", "Availability"),
        ("14-audit", "audit", "Configuration audit"),
        ("15-health", "health", "CMDB health"),
    ] {
        b.go(&format!("{api}/#/{page}"));
        let text = b.wait_text(&[heading]);
        assert!(!text.contains("(HTTP 5"), "{page}: {text}");
        b.screenshot(step);
    }
    let text = b.wait_text(&["CMDB health"]);
    assert!(!text.contains("Create a change record"));
    b.go(&format!("{api}/#/changes"));
    b.wait_text(&["Create a change record"]);
    b.go(&format!("{api}/#/drift"));
    b.wait_text(&["unauthorized", "/etc/cmdb-test/app.conf"]);
    b.go(&format!("{api}/#/baselines"));
    b.wait_text(&["initial ", "pending", "Capture a baseline"]);
    assert!(
        b.find_all("button.approve").is_empty(),
        "an operator may not approve baselines"
    );

    // Log out; a viewer sees the same data and no control that would change it.
    b.click(&b.find("#logout"));
    b.wait_text(&["Log in to the cmdb console"]);
    b.login(&api, &viewer);
    b.wait_text(&["Fleet overview", "victor", "viewer"]);
    b.go(&format!("{api}/#/incident/{number}"));
    let text = b.wait_text(&[&number, "Timeline"]);
    assert!(b.find_all("#incident-actions").is_empty(), "{text}");
    for control in ["#ack", "#resolve", "#incident-note", "main button"] {
        assert!(
            b.find_all(control).is_empty(),
            "a viewer sees {control}: {text}"
        );
    }
    b.screenshot("16-viewer-incident");
    b.go(&format!("{api}/#/changes"));
    let text = b.wait_text(&["Forward schedule of change"]);
    assert!(!text.contains("Create a change record"), "{text}");
    b.go(&format!("{api}/#/baselines"));
    let text = b.wait_text(&["Baselines", "initial "]);
    assert!(!text.contains("Capture a baseline"), "{text}");
    assert!(
        b.find_all("main button").is_empty(),
        "a viewer sees no buttons on the baselines page"
    );
    b.screenshot("17-viewer-baselines");

    // A change manager (here: an admin) approves the host's initial baseline in the UI.
    b.click(&b.find("#logout"));
    b.wait_text(&["Log in to the cmdb console"]);
    b.login(&api, &c.admin_token);
    b.wait_text(&["Fleet overview", "test-admin", "admin"]);
    b.go(&format!("{api}/#/baselines"));
    b.wait_text(&["initial ", "pending", "Capture a baseline"]);
    b.click(&b.find("button.approve"));
    wait_for(PAGE_WAIT, "the baseline approved", || {
        (c.call("GET", "/api/v1/baselines", None)["items"][0]["state"] == "approved").then_some(())
    });
    b.wait_text(&["approved", "by test-admin"]);
    assert!(b.find_all("button.approve").is_empty());
    b.screenshot("18-baseline-approved");
}
