//! A test host: a network namespace of the test's own, joined to this host by a veth pair, with
//! a small HTTP app inside it. Its address is not loopback, so it can stand in an EndpointSlice
//! (the API server rejects 127.0.0.0/8 there) and be probed for real.
//!
//! Each host gets a random /30 from 10.213.0.0/16: this side is .1, the namespace side .2, and
//! the app listens on port 8080. The app answers every path with the status the test chose
//! ([`TestHost::answer`]), or never answers. Dropping the host stops the app and deletes the
//! namespace and the veth pair. Needs root and iproute2 (`ip`), and `python3` for the app.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The port the app listens on inside the namespace (where the builders' Services and
/// EndpointSlices send traffic).
pub use super::objects::APP_PORT;

/// What the app answers to every request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Respond with this HTTP status.
    Status(u16),
    /// Accept the request and never respond.
    Hang,
}

const APP: &str = r#"
import http.server, os, sys, threading, time
control, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])

# Exit when the test process that started this app is gone, even if it died without cleanup.
parent = os.getppid()
def watch_parent():
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)
threading.Thread(target=watch_parent, daemon=True).start()

class Handler(http.server.BaseHTTPRequestHandler):
    def answer(self):
        with open(control) as f:
            mode = f.read().strip()
        if mode == "hang":
            time.sleep(3600)
            return
        code = int(mode) if mode.isdigit() else 500
        body = (mode + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = do_PATCH = answer
    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer((address, port), Handler)
server.daemon_threads = True
server.serve_forever()
"#;

pub struct TestHost {
    netns: String,
    veth: String,
    host_ip: Ipv4Addr,
    ip: Ipv4Addr,
    control: PathBuf,
    app: Option<Child>,
    _dir: tempfile::TempDir,
}

impl TestHost {
    /// Creates the namespace, the veth pair and the app, answering 200 until told otherwise.
    /// Panics with the failing command if any step fails, after removing what it made.
    pub fn start() -> TestHost {
        let dir = tempfile::Builder::new()
            .prefix("hs-testhost-")
            .tempdir()
            .expect("creating a temporary directory");
        let control = dir.path().join("answer");
        std::fs::write(&control, "200").expect("writing the answer file");
        remove_stale_namespaces();
        let tag = random_tag();
        let (host_ip, ip) = free_subnet(tag);
        let mut host = TestHost {
            netns: format!("{NETNS_PREFIX}{:x}-{tag:08x}", std::process::id()),
            veth: format!("hsv{tag:08x}"),
            host_ip,
            ip,
            control,
            app: None,
            _dir: dir,
        };
        // On a panic below, `host` drops and removes whatever was created so far.
        host.create_network();
        host.start_app();
        host.wait_until_serving();
        host
    }

    /// The app's address, as it would appear in an EndpointSlice.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip.into(), APP_PORT)
    }

    /// The namespace side's address (the endpoint address).
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// This side's address of the veth pair.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.host_ip
    }

    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// This side's veth link.
    pub fn veth(&self) -> &str {
        &self.veth
    }

    /// The app's process id, while it runs.
    pub fn app_pid(&self) -> Option<u32> {
        self.app.as_ref().map(Child::id)
    }

    /// Changes what the app answers from the next request on.
    pub fn answer(&self, answer: Answer) {
        let text = match answer {
            Answer::Status(code) => code.to_string(),
            Answer::Hang => "hang".to_string(),
        };
        std::fs::write(&self.control, text).expect("writing the answer file");
    }

    fn create_network(&self) {
        let peer = format!("hsp{}", &self.veth[3..]);
        let (ns, veth) = (self.netns.as_str(), self.veth.as_str());
        let host_cidr = format!("{}/30", self.host_ip);
        let ns_cidr = format!("{}/30", self.ip);
        ip(&["netns", "add", ns]);
        ip(&["link", "add", veth, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &peer, "netns", ns]);
        ip(&["addr", "add", &host_cidr, "dev", veth]);
        ip(&["link", "set", veth, "up"]);
        ip(&["-n", ns, "addr", "add", &ns_cidr, "dev", &peer]);
        ip(&["-n", ns, "link", "set", &peer, "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }

    fn start_app(&mut self) {
        let python = python();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(&python)
            .args(["-c", APP])
            .arg(&self.control)
            .arg(self.ip.to_string())
            .arg(APP_PORT.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting the app in {}: {e}", self.netns));
        self.app = Some(child);
    }

    fn wait_until_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Some(app) = self.app.as_mut()
                && let Ok(Some(status)) = app.try_wait()
            {
                panic!("the app in {} exited early: {status}", self.netns);
            }
            if Instant::now() >= deadline {
                panic!(
                    "the app in {} did not listen on {} within 15s",
                    self.netns,
                    self.addr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if let Some(mut app) = self.app.take() {
            let _ = app.kill();
            let _ = app.wait();
        }
        // Deleting the namespace deletes the peer end, and with it the pair; the explicit link
        // delete covers a pair whose peer never moved into the namespace.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        if link_exists(&self.veth) {
            let _ = Command::new("ip")
                .args(["link", "del", &self.veth])
                .status();
        }
    }
}

/// Test host namespaces are named `hs-<pid of the test process, hex>-<random>`.
const NETNS_PREFIX: &str = "hs-";

/// Deletes test host namespaces left by test processes that died before their cleanup ran (their
/// apps exit on their own once the parent is gone; the veth pair goes with the namespace).
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(NETNS_PREFIX)
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| u32::from_str_radix(pid, 16).ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Whether a network namespace of this name exists.
pub fn netns_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name))
        })
        .unwrap_or(false)
}

/// Whether a network link of this name exists in this namespace.
pub fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!(
            "running `ip {}` (is iproute2 installed?): {e}",
            args.join(" ")
        )
    });
    if !out.status.success() {
        panic!(
            "`ip {}` failed (root needed): {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
}

/// The real interpreter behind `python3` (not a shim script), so killing the child stops it.
fn python() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 is needed for the test host's app");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if path.is_empty() {
        "python3".to_string()
    } else {
        path
    }
}

fn random_tag() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    (nanos ^ std::process::id().rotate_left(16) ^ n.wrapping_mul(0x9e37_79b9)) & 0x7fff_ffff
}

/// A /30 in 10.213.0.0/16 that no interface on this host uses yet: (this side, namespace side).
fn free_subnet(seed: u32) -> (Ipv4Addr, Ipv4Addr) {
    let used = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut block = seed % (1 << 14); // 16384 blocks of 4 addresses in a /16
    for _ in 0..64 {
        let base = block * 4;
        let host = Ipv4Addr::new(10, 213, (base >> 8) as u8, (base & 0xff) as u8 + 1);
        let ns = Ipv4Addr::new(10, 213, (base >> 8) as u8, (base & 0xff) as u8 + 2);
        let net = format!("10.213.{}.{}", base >> 8, base & 0xff);
        if !used.contains(&format!(" {host}/")) && !used.contains(&format!(" {net}/")) {
            return (host, ns);
        }
        block = (block + 97) % (1 << 14);
    }
    panic!("no free /30 in 10.213.0.0/16");
}
