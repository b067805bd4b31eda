//! Test harness: runs the real `runner` binary against real QEMU machines.
//!
//! Images are baked once into a cache shared by all tests (`RUNNER_TEST_CACHE`, default under
//! the system temp dir); every test gets its own state directory, so "nothing leaked" can be
//! checked precisely: no machine directory, no process naming that directory.
#![allow(dead_code)]

pub mod http;
pub mod standin;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn image_cache() -> PathBuf {
    std::env::var_os("RUNNER_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("runner-test-cache"))
}

/// One test's world: a private state dir, the shared image cache, a project dir.
pub struct World {
    pub state: tempfile::TempDir,
    pub project: PathBuf,
}

impl World {
    /// A world whose project is the repository itself (its `builders/`).
    pub fn new() -> World {
        World::with_project(repo())
    }

    pub fn with_project(project: PathBuf) -> World {
        let state = tempfile::Builder::new()
            .prefix("runner-test-state-")
            .tempdir()
            .expect("temp state dir");
        World { state, project }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_runner"));
        c.arg("-C")
            .arg(&self.project)
            .env("RUNNER_CACHE_DIR", image_cache())
            .env("RUNNER_STATE_DIR", self.state.path())
            .env_remove("RUNNER_ACCEL")
            .stdin(Stdio::null());
        c
    }

    /// runner started in `dir` without `-C`: the project is found from there.
    pub fn cmd_in(&self, dir: &Path) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_runner"));
        c.current_dir(dir)
            .env("RUNNER_CACHE_DIR", image_cache())
            .env("RUNNER_STATE_DIR", self.state.path())
            .env_remove("RUNNER_ACCEL")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        run_shown(self.cmd(), args)
    }
    /// Starts runner in the background with stdout piped.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.cmd()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn runner")
    }

    pub fn machines(&self) -> PathBuf {
        self.state.path().join("machines")
    }

    /// Directories of live machines.
    pub fn machine_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.machines())
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    }

    /// Fails unless nothing of any machine remains: no machine directory (overlay, seed with
    /// keys, QMP socket), and no process whose command line names this state dir.
    /// The upload journal's records (unfinished S3 uploads), as text.
    pub fn upload_records(&self) -> Vec<String> {
        std::fs::read_dir(self.state.path().join("uploads"))
            .map(|d| {
                d.map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What a SIGKILLed runner left under `under` (an S3 key prefix) is in the upload journal,
    /// and `runner gc --force` (`cmd`: runner with the store's credentials) succeeds.
    pub fn gc_after_a_kill(&self, under: &str, cmd: Command) {
        let journal = self.upload_records();
        assert!(
            journal.iter().any(|r| r.contains(under)),
            "{under} is not in the upload journal: {journal:?}"
        );
        let forced = run_shown(cmd, &["gc", "--force"]);
        assert_eq!(forced.status.code(), Some(0));
    }

    pub fn assert_clean(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let dirs = self.machine_dirs();
            let procs = processes_mentioning(self.state.path());
            if dirs.is_empty() && procs.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "leaked: machine dirs {dirs:?}, processes {procs:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // Key material anywhere in the state dir would be a leak too.
        for entry in walk(self.state.path()) {
            let name = entry
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            assert!(
                !name.contains("key")
                    && !name.ends_with(".sock")
                    && !name.ends_with(".qcow2")
                    && !name.starts_with("upload-")
                    && !name.starts_with(".staging-"),
                "leaked file {}",
                entry.display()
            );
        }
    }

    /// Waits until a machine directory exists (the machine is booting).
    pub fn wait_for_machine(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.machine_dirs().is_empty() {
            assert!(Instant::now() < deadline, "no machine appeared");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Pids of processes (other than this one) whose command line contains `needle`.
pub fn processes_mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.as_os_str().as_encoded_bytes().to_vec();
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle.as_slice()))
        })
        // A zombie's cmdline is empty, so anything listed is really running.
        .collect()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

/// Reads the child's stdout until a line contains `marker`; panics after `timeout` or when
/// the child closed its stdout first, with what the child wrote to stderr.
pub fn wait_for_line(child: &mut Child, marker: &str, timeout: Duration) {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted = marker.to_owned();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(&wanted) {
                let _ = tx.send(());
            }
        }
    });
    if let Err(e) = rx.recv_timeout(timeout) {
        // SIGTERM, not SIGKILL: runner tears its machine down, nothing leaks from a failure.
        signal(child, libc::SIGTERM);
        let _ = child.wait();
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        panic!("marker line `{marker}` never appeared ({e}); runner's stderr:\n{err}");
    }
}

/// Waits for the child to exit, killing it after `timeout`; returns its exit code.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            eprintln!("runner exited: {status}; stderr:\n{err}");
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("runner did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn signal(child: &Child, sig: i32) {
    // SAFETY: plain kill(2) on a pid we own.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A throwaway project directory, built up file by file: the one way tests make projects.
pub struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Project {
        let dir = tempfile::Builder::new()
            .prefix("runner-test-project-")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(dir.path().join("builders")).unwrap();
        Project { dir }
    }

    /// `builders/<name>.toml` with `text`.
    pub fn builder(self, name: &str, text: &str) -> Project {
        self.file(&format!("builders/{name}.toml"), text)
    }

    /// A builder file of the repository's own `builders/`, under its name.
    pub fn repo_builder(self, name: &str) -> Project {
        let text = std::fs::read_to_string(repo().join(format!("builders/{name}.toml"))).unwrap();
        self.builder(name, &text)
    }

    /// Any file, its directories made as needed.
    pub fn file(self, rel: &str, text: &str) -> Project {
        let path = self.dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        self
    }

    pub fn toml(self, text: &str) -> Project {
        self.file("runner.toml", text)
    }

    pub fn done(self) -> tempfile::TempDir {
        self.dir
    }
}

/// A project of one target `t` on the repository's bookworm-amd64 builder.
pub fn one_target(script: &str, extra: &str) -> tempfile::TempDir {
    Project::new()
        .repo_builder("bookworm-amd64")
        .file("build.sh", script)
        .toml(&format!(
            "[target.t]\nbuilder = \"bookworm-amd64\"\nscript = \"build.sh\"\ncontext = \"src\"\n{extra}"
        ))
        .file("src/.keep", "")
        .done()
}

pub fn log_of(world: &World) -> String {
    let path = world.state.path().join("logs/builds/t.log");
    String::from_utf8_lossy(&std::fs::read(path).unwrap()).into_owned()
}

/// A project directory with the given builder files.
pub fn project_with(builders: &[(&str, &str)]) -> tempfile::TempDir {
    builders
        .iter()
        .fold(Project::new(), |p, (name, text)| p.builder(name, text))
        .done()
}

/// Copies a directory tree, leaving out any `artifacts/` directory (a build's output).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_name() == "artifacts" {
            continue;
        }
        if src.is_dir() {
            copy_dir(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// Follows a process's peak resident memory (VmHWM, bytes) until it exits.
pub fn watch_peak_rss(pid: u32) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let p = peak.clone();
    std::thread::spawn(move || {
        while let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(kib) = s
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                p.fetch_max(kib * 1024, std::sync::atomic::Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    peak
}

/// Runs runner (`cmd`) with `args`, its output shown in the test's log.
pub fn run_shown(mut cmd: Command, args: &[&str]) -> Output {
    let out = cmd.args(args).output().expect("run runner");
    eprintln!(
        "runner {args:?} -> {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A copy of `examples/<name>` with the shared provision scripts beside it (as in the
/// repository), in a temp dir; returns the dir and the example's root.
pub fn example(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::Builder::new()
        .prefix("runner-test-example-")
        .tempdir()
        .unwrap();
    let root = tmp.path().join("examples").join(name);
    copy_dir(&repo().join("examples").join(name), &root);
    copy_dir(
        &repo().join("provision-scripts"),
        &tmp.path().join("provision-scripts"),
    );
    (tmp, root)
}

/// Every stdout line of `--message-format json`, parsed.
pub fn json_events(out: &Output) -> Vec<serde_json::Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The `finished` event of `target`.
pub fn finished<'a>(events: &'a [serde_json::Value], target: &str) -> &'a serde_json::Value {
    events
        .iter()
        .find(|e| e["event"] == "finished" && e["target"] == target)
        .unwrap_or_else(|| panic!("no finished event for {target}"))
}

/// Seconds since the epoch, now.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
