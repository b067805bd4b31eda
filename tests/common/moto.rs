//! A local EC2-compatible endpoint for tests: moto's server (PyPI `moto[server]`, which
//! `scripts/test` installs), one per test on loopback, killed on drop. It has no real
//! machines, so tests exercise the EC2 control plane; its subnet is made inside 127.0.0.0/16
//! so the "private address" of every instance is a loopback one, and SSH attempts never
//! leave the host.
#![allow(dead_code)]

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::Filter;

pub struct Moto {
    child: Child,
    pub port: u16,
    rt: tokio::runtime::Runtime,
    pub client: Client,
    /// A subnet in 127.0.0.0/20 (room for thousands of instances) and an AMI that exists.
    pub subnet: String,
    pub ami: String,
    /// Where the server logs every call (`<access key id> <Action>` lines).
    calls: tempfile::TempDir,
}

#[derive(Debug, Clone)]
pub struct InstanceInfo {
    pub id: String,
    pub state: String,
    pub instance_type: String,
    pub tags: HashMap<String, String>,
    pub groups: Vec<String>,
    pub image: String,
    /// Launched as a spot instance.
    pub spot: bool,
}

impl Moto {
    /// `no_capacity`: instance types RunInstances refuses with InsufficientInstanceCapacity.
    pub fn start(no_capacity: &[&str]) -> Moto {
        Moto::refusing(no_capacity, &[])
    }

    /// Also refuses the first RunInstances calls, one per code of `refusals`, in order
    /// (`VcpuLimitExceeded`, `RequestLimitExceeded`, …), as a busy account would.
    pub fn refusing(no_capacity: &[&str], refusals: &[&str]) -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let calls = tempfile::tempdir().unwrap();
        let python = std::env::var("RUNNER_MOTO_PYTHON").unwrap_or_else(|_| "python3".into());
        let child = Command::new(&python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/ec2/moto-server.py"
            ))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("RUNNER_TEST_NO_CAPACITY", no_capacity.join(","))
            .env("RUNNER_TEST_REFUSALS", refusals.join(","))
            .env("RUNNER_TEST_CALL_LOG", calls.path().join("calls"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start moto with {python} (scripts/test installs it): {e}")
            });
        // Python imports take long on a loaded machine: generous, it is a start, not a wait.
        let deadline = Instant::now() + Duration::from_secs(180);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let creds = aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "t");
        let client = Client::from_conf(
            aws_sdk_ec2::config::Builder::new()
                .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
                .region(aws_sdk_ec2::config::Region::new("us-east-1"))
                .endpoint_url(format!("http://127.0.0.1:{port}"))
                .credentials_provider(creds)
                .build(),
        );
        let (subnet, ami) = rt.block_on(async {
            let vpc = client
                .create_vpc()
                .cidr_block("127.0.0.0/16")
                .send()
                .await
                .unwrap()
                .vpc()
                .unwrap()
                .vpc_id()
                .unwrap()
                .to_owned();
            let subnet = client
                .create_subnet()
                .vpc_id(vpc)
                .cidr_block("127.0.0.0/20")
                .send()
                .await
                .unwrap()
                .subnet()
                .unwrap()
                .subnet_id()
                .unwrap()
                .to_owned();
            let ami = client
                .register_image()
                .name("debian-12-amd64-20261101-1000")
                .architecture(aws_sdk_ec2::types::ArchitectureValues::X8664)
                .root_device_name("/dev/xvda")
                .send()
                .await
                .unwrap()
                .image_id()
                .unwrap()
                .to_owned();
            (subnet, ami)
        });
        Moto {
            child,
            port,
            rt,
            client,
            subnet,
            ami,
            calls,
        }
    }

    /// The calls moto served to the client with this access key id, by operation.
    pub fn calls_by(&self, access_key: &str) -> std::collections::BTreeMap<String, u64> {
        let log = std::fs::read_to_string(self.calls.path().join("calls")).unwrap_or_default();
        let mut by = std::collections::BTreeMap::new();
        for (key, op) in log.lines().filter_map(|l| l.split_once(' ')) {
            if key == access_key {
                *by.entry(op.to_owned()).or_default() += 1;
            }
        }
        by
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Environment for runner: credentials for moto, nothing from the host's AWS setup.
    pub fn env(&self, cmd: &mut Command) {
        cmd.env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL")
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .env("AWS_EC2_METADATA_DISABLED", "true");
    }

    /// Every instance moto knows, in any state.
    pub fn instances(&self) -> Vec<InstanceInfo> {
        self.block_on(async {
            let out = self.client.describe_instances().send().await.unwrap();
            out.reservations()
                .iter()
                .flat_map(|r| r.instances())
                .map(|i| InstanceInfo {
                    id: i.instance_id().unwrap().to_owned(),
                    state: i
                        .state()
                        .and_then(|s| s.name())
                        .map(|n| n.as_str().to_owned())
                        .unwrap_or_default(),
                    instance_type: i
                        .instance_type()
                        .map(|t| t.as_str().to_owned())
                        .unwrap_or_default(),
                    tags: i
                        .tags()
                        .iter()
                        .map(|t| {
                            (
                                t.key().unwrap_or("").to_owned(),
                                t.value().unwrap_or("").to_owned(),
                            )
                        })
                        .collect(),
                    groups: i
                        .security_groups()
                        .iter()
                        .filter_map(|g| g.group_id().map(str::to_owned))
                        .collect(),
                    image: i.image_id().unwrap_or_default().to_owned(),
                    spot: i.instance_lifecycle().is_some_and(|l| l.as_str() == "spot"),
                })
                .collect()
        })
    }

    /// Terminates an instance as someone other than runner would (a spot reclaim, a
    /// colleague's console).
    pub fn terminate(&self, id: &str) {
        self.block_on(async {
            self.client
                .terminate_instances()
                .instance_ids(id)
                .send()
                .await
                .unwrap()
        });
    }

    /// Instances not yet terminated.
    pub fn live_instances(&self) -> Vec<InstanceInfo> {
        self.instances()
            .into_iter()
            .filter(|i| i.state != "terminated")
            .collect()
    }

    /// Security groups carrying runner's run tag.
    pub fn runner_groups(&self) -> Vec<String> {
        self.block_on(async {
            self.client
                .describe_security_groups()
                .filters(
                    Filter::builder()
                        .name("tag-key")
                        .values("runner:run-id")
                        .build(),
                )
                .send()
                .await
                .unwrap()
                .security_groups()
                .iter()
                .filter_map(|g| g.group_id().map(str::to_owned))
                .collect()
        })
    }

    /// The user data as the instance got it, decoded. (moto base64-encodes what it was
    /// sent once more than AWS does; both layers are undone.)
    pub fn user_data(&self, instance: &str) -> String {
        let attr = self.block_on(
            self.client
                .describe_instance_attribute()
                .instance_id(instance)
                .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
                .send(),
        );
        let b64 = attr
            .unwrap()
            .user_data()
            .unwrap()
            .value()
            .unwrap()
            .to_owned();
        let mut bytes = aws_smithy_types::base64::decode(&b64).unwrap();
        if !bytes.starts_with(b"#cloud-config")
            && let Ok(inner) =
                aws_smithy_types::base64::decode(String::from_utf8_lossy(&bytes).trim())
        {
            bytes = inner;
        }
        String::from_utf8(bytes).unwrap()
    }

    pub fn shutdown_behavior(&self, instance: &str) -> String {
        let attr = self.block_on(
            self.client
                .describe_instance_attribute()
                .instance_id(instance)
                .attribute(
                    aws_sdk_ec2::types::InstanceAttributeName::InstanceInitiatedShutdownBehavior,
                )
                .send(),
        );
        attr.unwrap()
            .instance_initiated_shutdown_behavior()
            .and_then(|v| v.value())
            .unwrap_or("")
            .to_owned()
    }

    /// The ingress rules of a group, as `proto:from-to:cidr`.
    pub fn ingress(&self, group: &str) -> Vec<String> {
        self.block_on(async {
            let out = self
                .client
                .describe_security_groups()
                .group_ids(group)
                .send()
                .await
                .unwrap();
            out.security_groups()
                .iter()
                .flat_map(|g| g.ip_permissions())
                .flat_map(|p| {
                    p.ip_ranges().iter().map(move |r| {
                        format!(
                            "{}:{}-{}:{}",
                            p.ip_protocol().unwrap_or(""),
                            p.from_port().unwrap_or(-1),
                            p.to_port().unwrap_or(-1),
                            r.cidr_ip().unwrap_or("")
                        )
                    })
                })
                .collect()
        })
    }

    /// An instance runner did not make (no tags): gc must leave it alone.
    pub fn untagged_instance(&self) -> String {
        self.block_on(async {
            self.client
                .run_instances()
                .image_id(&self.ami)
                .min_count(1)
                .max_count(1)
                .subnet_id(&self.subnet)
                .send()
                .await
                .unwrap()
                .instances()[0]
                .instance_id()
                .unwrap()
                .to_owned()
        })
    }

    /// Registers another amd64 image; returns its id.
    pub fn register_ami(&self, name: &str) -> String {
        self.block_on(async {
            self.client
                .register_image()
                .name(name)
                .architecture(aws_sdk_ec2::types::ArchitectureValues::X8664)
                .root_device_name("/dev/xvda")
                .send()
                .await
                .unwrap()
                .image_id()
                .unwrap()
                .to_owned()
        })
    }

    /// A builder file for this endpoint.
    pub fn builder(&self, extra: &str) -> String {
        format!(
            "backend = \"ec2\"\nregion = \"us-east-1\"\nendpoint = \"{}\"\nami = \"{}\"\n\
             subnet = \"{}\"\nssh_cidr = \"127.0.0.1/32\"\naddress = \"private\"\n{extra}",
            self.endpoint(),
            self.ami,
            self.subnet
        )
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
