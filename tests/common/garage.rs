//! A real S3-compatible server for tests: Garage, which checks SigV4 signatures and the
//! SHA-256 of every object and part, and can list unfinished multipart uploads (what "nothing
//! dangling" has to be proven with). One single-node instance per test, on loopback, started
//! through `scripts/garage-server` (which `scripts/test` uses to install it); killed on drop.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

use aws_sdk_s3::Client;

pub const KEY: &str = "runnertestkey";
pub const SECRET: &str = "runnertestsecret";
pub const BUCKET: &str = "bucket";

pub struct Garage {
    pub port: u16,
    rpc_port: u16,
    pub data: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Garage {
    /// A fresh server with one bucket, [`BUCKET`], that the test key may use.
    pub fn start() -> Garage {
        let g = Garage {
            port: free_port(),
            rpc_port: free_port(),
            data: tempfile::tempdir().unwrap(),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        };
        g.launch();
        g
    }

    fn launch(&self) {
        let out = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/garage-server"
        ))
        .args([&self.port.to_string(), KEY, SECRET])
        .arg(self.data.path())
        .arg(BUCKET)
        .env("S3_RPC_PORT", self.rpc_port.to_string())
        .output()
        .expect("run scripts/garage-server");
        assert!(
            out.status.success(),
            "garage did not start (scripts/test installs it):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Kills the server the hard way, as a crash or a network loss would look to a client.
    pub fn kill(&self) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on the pid garage-server recorded for this test's instance.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            while std::path::Path::new(&format!("/proc/{pid}")).exists() {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let _ = std::fs::remove_file(self.pid_file());
        }
    }

    /// Starts the same server again: same port, keys and data.
    pub fn restart(&self) {
        self.launch();
    }

    fn pid_file(&self) -> PathBuf {
        self.data.path().join("garage.pid")
    }

    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A client of our own, to inspect the server independently of runner.
    pub fn client(&self, secret: &str) -> Client {
        let creds = aws_sdk_s3::config::Credentials::new(KEY, secret, None, None, "test");
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(self.endpoint())
            .credentials_provider(creds)
            .force_path_style(true)
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .build();
        Client::from_conf(conf)
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// (key, size) of every object in [`BUCKET`], sorted.
    /// Whether any shared context pack (`.runner/packs/…`) is stored.
    pub fn holds_a_context_pack(&self) -> bool {
        self.objects()
            .iter()
            .any(|(k, _)| k.contains(".runner/packs/"))
    }

    /// The first stored key (in order) that ends with `suffix`.
    pub fn key_ending(&self, suffix: &str) -> String {
        self.objects()
            .into_iter()
            .map(|(k, _)| k)
            .find(|k| k.ends_with(suffix))
            .unwrap_or_else(|| panic!("no object ends with {suffix}"))
    }

    pub fn objects(&self) -> Vec<(String, i64)> {
        let c = self.client(SECRET);
        let mut out = self.block_on(async {
            let mut out = vec![];
            let mut pages = c.list_objects_v2().bucket(BUCKET).into_paginator().send();
            while let Some(p) = pages.next().await {
                for o in p.expect("list objects").contents() {
                    out.push((o.key().unwrap().to_owned(), o.size().unwrap_or(0)));
                }
            }
            out
        });
        out.sort();
        out
    }

    /// Keys of every unfinished multipart upload in [`BUCKET`].
    pub fn unfinished_uploads(&self) -> Vec<String> {
        let c = self.client(SECRET);
        self.block_on(async {
            c.list_multipart_uploads()
                .bucket(BUCKET)
                .send()
                .await
                .expect("list multipart uploads")
                .uploads()
                .iter()
                .map(|u| {
                    format!(
                        "{} ({})",
                        u.key().unwrap_or(""),
                        u.upload_id().unwrap_or("")
                    )
                })
                .collect()
        })
    }

    pub fn get(&self, key: &str) -> Vec<u8> {
        let c = self.client(SECRET);
        self.block_on(async {
            c.get_object()
                .bucket(BUCKET)
                .key(key)
                .send()
                .await
                .unwrap_or_else(|e| panic!("get {key}: {e:?}"))
                .body
                .collect()
                .await
                .unwrap()
                .into_bytes()
                .to_vec()
        })
    }

    /// Asserts the bucket holds nothing: no object and no unfinished multipart upload.
    pub fn assert_empty(&self) {
        assert_eq!(self.objects(), vec![], "objects left behind");
        assert_eq!(
            self.unfinished_uploads(),
            Vec::<String>::new(),
            "uploads left dangling"
        );
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.kill();
    }
}
