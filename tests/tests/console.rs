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
#[path = "../../collector/src/http/openapi_schema.rs"]
mod openapi_schema;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

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
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"}
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

    /// Script errors and Content-Security-Policy violations the page logged since the last
    /// call (failed requests, such as the 404 of a route this collector lacks, are not).
    fn script_errors(&self) -> Vec<String> {
        let logs = self.post(&self.s("/se/log"), &json!({"type": "browser"}));
        logs.as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["message"].as_str())
            .filter(|m| {
                m.contains("Uncaught")
                    || m.contains("Content Security Policy")
                    || m.contains("TypeError")
                    || m.contains("ReferenceError")
            })
            .map(str::to_owned)
            .collect()
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
    let text = b.wait_text(&["Via"]);
    assert!(!text.contains("not available on this collector"), "{text}");
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

    // Capacity and licenses, served by this collector (a fresh host has no forecast yet).
    b.go(&format!("{api}/#/capacity"));
    let text = b.wait_text(&["Capacity", "At risk (0)", "Trend and forecast"]);
    assert!(!text.contains("not available on this collector"), "{text}");
    b.screenshot("08-capacity");
    b.go(&format!("{api}/#/licenses"));
    let text = b.wait_text(&["License position", "Software inventory", "compliant"]);
    assert!(!text.contains("not available on this collector"), "{text}");
    b.screenshot("09-licenses");

    // Every other page loads without an error.
    for (step, page, heading) in [
        ("10-changes", "changes", "Forward schedule of change"),
        ("11-drift", "drift", "Drift per day"),
        ("12-baselines", "baselines", "initial "),
        ("13-availability", "availability", "Availability"),
        ("14-audit", "audit", "No audit has run yet"),
        ("15-health", "health", "completeness"),
    ] {
        b.go(&format!("{api}/#/{page}"));
        let text = b.wait_text(&[heading]);
        assert!(!text.contains("(HTTP 5"), "{page}: {text}");
        assert!(
            !text.contains("not available on this collector"),
            "{page}: {text}"
        );
        b.screenshot(step);
    }
    let text = b.wait_text(&["CMDB health"]);
    assert!(!text.contains("Create a change record"));
    // The operator raises a change record from the form (the window defaults to +1 h..+3 h).
    b.go(&format!("{api}/#/changes"));
    b.wait_text(&["Create a change record"]);
    b.type_into(&b.find("#change-form input[name=title]"), "Rotate app.conf");
    b.type_into(
        &b.find("#change-form textarea[name=scope]"),
        "class=file key=/etc/cmdb-test/*",
    );
    b.click(&b.find("#change-form button[type=submit]"));
    b.wait_text(&[
        "CHG0000001",
        "Rotate app.conf",
        "draft",
        "class=file key=/etc/cmdb-test/*",
    ]);
    assert!(
        b.find_all("button.approve").is_empty(),
        "an operator may not approve changes"
    );
    let change = c.call("GET", "/api/v1/changes/CHG0000001", None);
    assert_eq!(change["created_by"], "olivia");
    assert_eq!(change["state"], "draft");
    b.screenshot("10b-change-created");
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
    // … and the operator's change record.
    b.go(&format!("{api}/#/changes"));
    b.wait_text(&["CHG0000001", "draft"]);
    b.click(&b.find("button.approve"));
    wait_for(PAGE_WAIT, "the change approved", || {
        (c.call("GET", "/api/v1/changes/CHG0000001", None)["state"] == "approved").then_some(())
    });
    b.wait_text(&["CHG0000001", "approved", "Start"]);
    b.screenshot("19-change-approved");

    // The auditor's work: import the authorised register from a file (the watched file,
    // present, and one that is not there), run an audit from the console, record the
    // corrective action on the missing file; the CMDB health page then reads compliance
    // from that run.
    let register = tmp.path().join("register.csv");
    std::fs::write(
        &register,
        format!(
            "class,key,host\nfile,/etc/cmdb-test/app.conf,{hostname}\n\
             file,/etc/cmdb-test/retired.conf,{hostname}\n"
        ),
    )
    .unwrap();
    b.go(&format!("{api}/#/audit"));
    b.wait_text(&["No audit has run yet", "Import the authorised register"]);
    b.type_into(&b.find("#register-file"), register.to_str().unwrap());
    b.wait_text(&["register imported: 2 rows"]);
    assert_eq!(c.call("GET", "/api/v1/audit/register", None)["rows"], 2);
    b.click(&b.find("#run-audit"));
    let text = b.wait_text(&[
        "Deficiencies of run run-000001",
        "missing",
        "file /etc/cmdb-test/retired.conf",
    ]);
    assert!(!text.contains("unregistered"), "{text}");
    let run = c.call("GET", "/api/v1/audit/runs/run-000001", None);
    assert_eq!(run["summary"]["missing"], 1, "{run}");
    assert_eq!(run["summary"]["registered"], 2, "{run}");
    b.screenshot("19b-audit-run");
    b.click(&b.find("button.def-action_taken"));
    wait_for(PAGE_WAIT, "the deficiency moved to action_taken", || {
        (c.call("GET", "/api/v1/audit/runs/run-000001", None)["deficiencies"][0]["state"]
            == "action_taken")
            .then_some(())
    });
    b.wait_text(&["action_taken", "(test-admin, "]);
    b.go(&format!("{api}/#/health"));
    b.wait_text(&["compliance from audit run run-000001"]);
    b.screenshot("19c-health-compliance");
    assert_eq!(
        b.script_errors(),
        Vec::<String>::new(),
        "the pages logged errors"
    );
}

/// Stand-in answers for the pages whose interesting states a fresh test collector cannot
/// reach in seconds (a capacity forecast needs days of metrics, a licence shortfall needs
/// entitlements and licensable software, a failing fleet needs a second, broken agent).
/// Each is (substring of the request path, the docs/openapi.json path whose 200 answer it
/// stands in for, the body); `stand_ins_match_the_openapi_schemas` checks every body against
/// that schema, so the stand-ins cannot drift from what the collector really answers.
/// Matched by substring of the request path, first match wins.
fn contract_fixtures() -> Value {
    let now = SystemTime::now();
    let t = |offset_h: i64| {
        let at = if offset_h >= 0 {
            now + Duration::from_secs(offset_h as u64 * 3600)
        } else {
            now - Duration::from_secs((-offset_h) as u64 * 3600)
        };
        humantime::format_rfc3339_seconds(at).to_string()
    };
    let points: Vec<Value> = (0..48)
        .map(|i| {
            let v = 70.0 + f64::from(i32::try_from(i).unwrap()) * 0.2;
            json!({"t": t(i - 48), "min": v - 1.0, "avg": v, "max": v + 2.0, "p95": v + 1.5,
                   "samples": 60})
        })
        .collect();
    let summary =
        json!({"registered": 40, "live": 41, "missing": 1, "unregistered": 2, "mismatched": 0});
    let run_info = json!({
        "id": "run-000001", "started_at": t(-1), "finished_at": t(-1), "started_by": "test-admin",
        "missing_after_days": 7, "summary": summary,
        "classes": [{"class": "host", "registered": 40, "healthy": 39, "unregistered": 2}],
        "deficiencies_total": 3, "truncated": false, "millis": 12});
    let mut run = run_info.clone();
    run["deficiencies"] = json!([
        {"id": "d-000001", "kind": "missing", "class": "host", "key": "old-db-7", "host": "old-db-7",
         "host_id": null, "ci_id": null, "attribute": null, "expected": null, "actual": null,
         "state": "open", "note": "", "updated_at": null, "updated_by": null},
        {"id": "d-000002", "kind": "mismatched", "class": "package", "key": "dpkg:openssl:amd64",
         "host": "web-1", "host_id": "host-a", "ci_id": "ci-ssl", "attribute": "version",
         "expected": "3.0.15", "actual": "3.0.11", "state": "action_taken", "note": "CHG-7",
         "updated_at": t(0), "updated_by": "olivia"}]);
    let fleet_item = |id: &str, host: &str, name: &str, version: &str, seen: i64, up: bool| {
        json!({"agent_id": id, "host_id": host, "hostname": name, "version": version,
               "last_seen": t(seen), "up": up, "connected": up, "outbox_events": 0,
               "outbox_bytes": 0, "collectors": [], "failures": 0, "revoked": false, "gaps": 0,
               "dropped_metrics": 0, "dropped_inventory_changes": 0})
    };
    let mut db = fleet_item("agt-b", "host-b", "db-1", "0.1.0", -30, false);
    db["outbox_events"] = json!(1200);
    db["outbox_bytes"] = json!(5_000_000);
    db["collectors"] = json!([{"name": "rpm", "status": "timeout", "message": "rpm -qa took 30s"}]);
    db["failures"] = json!(3);
    let forecast = |resource: &str,
                    status: &str,
                    current: f64,
                    threshold: f64,
                    slope: f64,
                    exhaustion: Value,
                    days: Value,
                    confidence: f64| {
        json!({"host_id": "host-a", "hostname": "web-1", "resource": resource, "unit": "percent",
               "status": status, "current": current, "capacity": null, "threshold": threshold,
               "threshold_percent": threshold, "slope_per_day": slope, "exhaustion_at": exhaustion,
               "days_to_threshold": days, "confidence": confidence, "points": 48,
               "incident": null, "computed_at": t(0)})
    };
    let position = |product: &str,
                    vendor: &str,
                    edition: &str,
                    metric: &str,
                    entitled: i64,
                    consumed: i64,
                    status: &str,
                    hosts: Value| {
        let host_count = hosts.as_array().map_or(0, Vec::len);
        json!({"vendor": vendor, "product": product, "edition": edition, "metric": metric,
               "entitled": entitled, "consumed": consumed, "balance": entitled - consumed,
               "status": status, "installs": host_count, "host_count": host_count,
               "hosts": hosts, "hosts_truncated": false, "entitlements": [], "expiring": [],
               "expired": []})
    };
    let node = |id: &str, class: &str, key: &str, hops: u64, via: &str| {
        json!({"id": id, "class": class, "key": key, "host_id": "host-a", "hostname": "web-1",
               "hops": hops, "direction": "downstream", "via": via})
    };
    json!([
        ["/api/v1/fleet", "/api/v1/fleet", {
            "summary": {"agents": 2, "up": 1, "down": 1, "versions": {"0.2.0": 1, "0.1.0": 1}},
            "items": [fleet_item("agt-a", "host-a", "web-1", "0.2.0", 0, true), db],
            "truncated": false, "up_window_seconds": 90}],
        ["/api/v1/capacity/forecast", "/api/v1/capacity/forecast", {"items": [
            forecast("filesystem:/var", "at_risk", 79.4, 90.0, 4.8, json!(t(53)), json!(2.2), 0.93),
            forecast("cpu", "ok", 12.0, 95.0, 0.0, Value::Null, Value::Null, 0.4)],
            "truncated": false}],
        ["/api/v1/capacity", "/api/v1/capacity", {"items": [
            {"host_id": "host-a", "hostname": "web-1", "resource": "filesystem:/var",
             "unit": "percent", "capacity": null, "tier": "hour", "points": points}]}],
        ["/api/v1/licenses/position", "/api/v1/licenses/position", {"items": [
            position("Database", "Oracle", "Enterprise", "per-core", 8, 16, "shortfall",
                     json!([{"host_id": "host-b", "hostname": "db-1", "consumed": 16}])),
            position("Ubuntu Pro", "Canonical", "", "per-host", 10, 2, "surplus", json!([]))],
            "built_at": t(0), "expiry_window_days": 90}],
        ["/api/v1/licenses/software", "/api/v1/licenses/software", {"items": [
            {"vendor": "Oracle", "product": "Database", "edition": "Enterprise",
             "versions": ["19.3.0"], "installs": 1, "hosts": 1, "cores": 16, "users": 0,
             "normalised": true, "licensable": true}],
            "built_at": t(0), "packages_scanned": 812, "products_overflow": 0}],
        ["/api/v1/audit/runs/run-000001", "/api/v1/audit/runs/{id}", run],
        ["/api/v1/audit/runs", "/api/v1/audit/runs", {"items": [run_info]}],
        ["/api/v1/cmdb-health/failing", "/api/v1/cmdb-health/failing", {
            "generated_at": t(0), "total": 1, "truncated": false, "items": [
            {"ci_id": "ci-h1", "class": "host", "key": "host-z", "host_id": "host-z",
             "kpi": "completeness", "reason": "no owner attribute"}]}],
        ["/api/v1/cmdb-health", "/api/v1/cmdb-health", {
            "generated_at": t(0), "cache_ttl_seconds": 300, "cis_scanned": 510,
            "compliance": {"run_id": "run-000001", "finished_at": t(-1)}, "kpis": [
            {"kpi": "completeness", "class": "host", "healthy": 9, "total": 10, "ratio": 0.9},
            {"kpi": "correctness", "class": "package", "healthy": 480, "total": 500, "ratio": 0.96}]}],
        ["/api/v1/cis/ci-root/impact", "/api/v1/cis/{id}/impact", {"root": "ci-root", "depth": 3,
            "nodes": [node("ci-root", "host", "host-a", 0, "ci-root"),
                      node("ci-svc", "service", "nginx.service", 1, "ci-root")],
            "edges": [{"from": "ci-root", "to": "ci-svc", "kind": "contains"}],
            "truncated": false}],
        ["/api/v1/cis/ci-root/relations", "/api/v1/cis/{id}/relations", {"items": []}],
        ["/api/v1/cis/ci-root", "/api/v1/cis/{id}", {"id": "ci-root", "host_id": "host-a",
            "class": "host", "key": "host-a", "state": "present", "attrs": {"hostname": "web-1"},
            "version": 1, "first_seen": t(-2), "last_seen": t(0), "last_changed": t(-2),
            "source_agent": "agt-a", "source_seq": 1,
            "versions": [{"ci_id": "ci-root", "version": 1, "change": "added", "state": "present",
                          "attrs": {"hostname": "web-1"}, "old_attrs": {}, "observed_at": t(-2),
                          "agent_id": "agt-a", "seq": 1, "change_id": null}]}],
    ])
}

/// Every stand-in body is a valid 200 answer of its route in docs/openapi.json.
#[test]
fn stand_ins_match_the_openapi_schemas() {
    let spec: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut problems = Vec::new();
    for f in contract_fixtures().as_array().unwrap() {
        let (route, body) = (f[1].as_str().unwrap(), &f[2]);
        let schema = &spec["paths"][route]["get"]["responses"]["200"]["content"]["application/json"]
            ["schema"];
        assert!(!schema.is_null(), "{route}: no 200 JSON schema in the spec");
        openapi_schema::schema_errors(schema, body, &spec, route, &mut problems);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Replaces `fetch` in the page: paths matching a fixture get its JSON, the rest go to the
/// collector. Lasts until the page reloads (the console navigates by hash, so it does not).
const STUB_FETCH: &str = r#"
const fixtures = arguments[0];
const real = window.fetch.bind(window);
window.fetch = (url, opts) => {
  const path = String(url);
  for (const [part, _route, body] of fixtures) {
    if (path.includes(part)) {
      return Promise.resolve(new Response(JSON.stringify(body),
        { status: 200, headers: { 'Content-Type': 'application/json' } }));
    }
  }
  return real(url, opts);
};
return true;
"#;

#[test]
fn the_pages_of_newer_routes_render_their_documented_shapes() {
    if !browser_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let c = Collector::start(&tmp.path().join("collector"));
    let api = c.api();
    let b = Browser::start(screenshots_dir());
    b.go(&format!("{api}/#/fleet"));
    b.find("#token");
    // The browser enforces the policy: injected inline script does not run.
    let ran = b.script(
        "const s = document.createElement('script'); \
         s.textContent = 'window.injected = true'; document.body.appendChild(s); \
         return window.injected === true;",
    );
    assert_eq!(ran, json!(false), "inline script ran despite the CSP");
    let errors = b.script_errors();
    assert!(
        errors.iter().any(|e| e.contains("Content Security Policy")),
        "{errors:?}"
    );
    b.post(
        &b.s("/execute/sync"),
        &json!({"script": STUB_FETCH, "args": [contract_fixtures()]}),
    );
    b.login(&api, &c.admin_token);

    let text = b.wait_text(&["Fleet overview", "web-1", "db-1", "1200 events"]);
    assert!(text.contains("rpm: rpm -qa took 30s"), "{text}");
    assert!(text.contains("0.2.0 × 1"), "{text}");
    b.screenshot("20-contract-fleet");

    b.go(&format!("{api}/#/capacity"));
    let text = b.wait_text(&["At risk (1)", "filesystem:/var", "Trend and forecast"]);
    assert!(text.contains("93 %") && text.contains("2.2"), "{text}");
    assert!(!b.find_all("svg.chart path.forecast").is_empty());
    assert!(!b.find_all("svg.chart line.threshold").is_empty());
    b.screenshot("21-contract-capacity");

    b.go(&format!("{api}/#/licenses"));
    let text = b.wait_text(&[
        "License position",
        "Database Enterprise",
        "shortfall",
        "19.3.0",
    ]);
    assert!(
        text.contains("db-1") && text.contains("Ubuntu Pro"),
        "{text}"
    );
    b.screenshot("22-contract-licenses");

    b.go(&format!("{api}/#/audit"));
    let text = b.wait_text(&[
        "Deficiencies of run run-000001",
        "old-db-7",
        "Run an audit now",
        "version: expected 3.0.15, found 3.0.11",
    ]);
    assert!(text.contains("CHG-7 (olivia"), "{text}");
    // open → action taken or verified; action taken → verified only.
    assert_eq!(b.find_all("button.def-action_taken").len(), 1, "{text}");
    assert_eq!(b.find_all("button.def-verified").len(), 2, "{text}");
    b.screenshot("23-contract-audit");

    b.go(&format!("{api}/#/health"));
    let text = b.wait_text(&["completeness", "90.0 %", "no owner attribute"]);
    assert!(
        text.contains("compliance from audit run run-000001"),
        "{text}"
    );
    b.screenshot("24-contract-health");

    b.go(&format!("{api}/#/ci/ci-root"));
    let text = b.wait_text(&["host host-a", "Impact", "service nginx.service"]);
    assert!(!text.contains("not available on this collector"), "{text}");
    b.screenshot("25-contract-impact");
    assert_eq!(
        b.script_errors(),
        Vec::<String>::new(),
        "the pages logged errors"
    );
}
