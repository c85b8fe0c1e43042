//! A 3-node Garage cluster on loopback (replication factor 3, sqlite metadata), each node
//! a child `garage server` with its own config, ports and data under one temp dir. Owns
//! the setup through the `garage` CLI (connect, layout, key, bucket `recordings`) and
//! per-node SIGKILL / restart for quorum tests: one node down still serves reads and
//! writes, two down answer 503.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{accepts, find_binary, free_ports, kill_child, log_file, wait_listening};
use super::{S3Client, Store, BUCKET};

const NODES: usize = 3;
const KEY_NAME: &str = "edgerec-test";

struct Node {
    config: PathBuf,
    log: PathBuf,
    rpc_port: u16,
    s3_port: u16,
    child: Option<Child>,
}

pub struct GarageCluster {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
    /// `<node id>@127.0.0.1:<rpc port>` of each node, once the cluster is formed.
    ids: Vec<String>,
    access_key: String,
    secret_key: String,
    /// How long `start()` took, from spawning the nodes to a working PUT + GET.
    pub start_time: Duration,
}

impl GarageCluster {
    /// Starts 3 nodes, forms the cluster, creates key + bucket and waits until a signed
    /// PUT + GET of a probe object works (the probe is deleted again).
    pub fn start() -> GarageCluster {
        let t0 = Instant::now();
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = free_ports(NODES * 3);
        let secret = rpc_secret();
        let nodes = (0..NODES)
            .map(|i| {
                let (rpc, s3, admin) = (ports[3 * i], ports[3 * i + 1], ports[3 * i + 2]);
                let nd = dir.path().join(format!("node{i}"));
                std::fs::create_dir_all(&nd).expect("node dir");
                let text = format!(
                    "metadata_dir = {meta:?}\ndata_dir = {data:?}\ndb_engine = \"sqlite\"\n\
                     replication_factor = 3\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                     rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\n\
                     [s3_api]\napi_bind_addr = \"127.0.0.1:{s3}\"\ns3_region = \"garage\"\n\n\
                     [admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\n",
                    meta = nd.join("meta"),
                    data = nd.join("data"),
                );
                let config = nd.join("garage.toml");
                std::fs::write(&config, text).expect("write garage.toml");
                Node {
                    config,
                    log: nd.join("garage.log"),
                    rpc_port: rpc,
                    s3_port: s3,
                    child: None,
                }
            })
            .collect();
        let mut c = GarageCluster {
            dir,
            nodes,
            ids: Vec::new(),
            access_key: String::new(),
            secret_key: String::new(),
            start_time: Duration::ZERO,
        };
        for i in 0..NODES {
            c.start_node(i);
        }
        let ids: Vec<String> = (0..NODES)
            .map(|i| c.cli_retry(i, &["node", "id", "-q"]).trim().to_owned())
            .collect();
        for id in &ids[1..] {
            c.cli_retry(0, &["node", "connect", id]);
        }
        for id in &ids {
            let hex = id.split('@').next().expect("node id");
            c.cli_retry(0, &["layout", "assign", "-z", "dc1", "-c", "1G", hex]);
        }
        c.cli_retry(0, &["layout", "apply", "--version", "1"]);
        c.ids = ids;
        let out = c.cli_retry(0, &["key", "create", KEY_NAME]);
        let field = |name: &str| {
            out.lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| panic!("no {name:?} in `garage key create` output:\n{out}"))
        };
        c.access_key = field("Key ID:");
        c.secret_key = field("Secret key:");
        c.cli_retry(0, &["bucket", "create", BUCKET]);
        let allow = ["bucket", "allow", "--read", "--write", "--owner", BUCKET];
        c.cli_retry(0, &[&allow[..], &["--key", KEY_NAME]].concat());
        let client = c.client();
        super::wait_for("garage probe PUT + GET", Duration::from_secs(60), || {
            let put = client.put_object("edgerec-probe", b"probe").ok()?;
            (put.status == 200).then_some(())?;
            let get = super::send("GET", &client.presigned_get("edgerec-probe"), &[], &[]).ok()?;
            (get.status == 200 && get.body == b"probe").then_some(())
        });
        let _ = client.delete_object("edgerec-probe");
        c.start_time = t0.elapsed();
        c
    }

    /// Runs `garage -c <node i config> ARGS`: stdout, or stdout + stderr if it failed.
    pub fn cli(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let bin = find_binary("EDGEREC_GARAGE", "garage");
        let out = Command::new(&bin)
            .arg("-c")
            .arg(&self.nodes[i].config)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr))
        }
    }

    /// `cli`, retried for up to 30 s (the nodes need a moment to see each other).
    fn cli_retry(&self, i: usize, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.cli(i, args) {
                Ok(out) => return out,
                Err(e) if Instant::now() > deadline => {
                    panic!("garage {}: {e}\nnode log:\n{}", args.join(" "), self.log(i))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// Node 0's S3 API.
    pub fn endpoint(&self) -> String {
        self.node_endpoint(0)
    }
    pub fn node_endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].s3_port)
    }
    pub fn region(&self) -> &str {
        "garage"
    }
    pub fn bucket(&self) -> &str {
        BUCKET
    }
    pub fn access_key(&self) -> &str {
        &self.access_key
    }
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// SIGKILL node `i` (no-op if it is down).
    pub fn stop_node(&mut self, i: usize) {
        kill_child(&mut self.nodes[i].child);
    }

    /// Starts node `i` with its config and data; waits until its RPC and S3 ports accept,
    /// then (once the cluster is formed) runs `node connect` between it and every running
    /// node, both ways. Left alone, a running node marks the restarted one as up only after
    /// its own outgoing reconnect, retried every 30 s (`CONN_RETRY_INTERVAL` in
    /// garage_net; incoming connections do not count), so writes could stay 503 that long.
    pub fn start_node(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "garage node {i} is running");
        let bin = find_binary("EDGEREC_GARAGE", "garage");
        let n = &self.nodes[i];
        let mut child = Command::new(&bin)
            .arg("-c")
            .arg(&n.config)
            .arg("server")
            .env("RUST_LOG", "garage=info")
            .stdin(Stdio::null())
            .stdout(log_file(&n.log))
            .stderr(log_file(&n.log))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "spawn {}: {e} (run scripts/install-test-deps.sh)",
                    bin.display()
                )
            });
        let limit = Duration::from_secs(30);
        let ok = wait_listening(&mut child, n.rpc_port, limit, "garage rpc")
            && wait_listening(&mut child, n.s3_port, limit, "garage s3");
        self.nodes[i].child = Some(child);
        assert!(ok, "garage node {i} exited; log:\n{}", self.log(i));
        for j in (0..self.ids.len()).filter(|&j| j != i && self.nodes[j].child.is_some()) {
            self.cli_retry(j, &["node", "connect", &self.ids[i]]);
            self.cli_retry(i, &["node", "connect", &self.ids[j]]);
        }
    }

    pub fn node_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some() && accepts(self.nodes[i].s3_port)
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Store for GarageCluster {
    fn client(&self) -> S3Client {
        S3Client {
            endpoint: self.endpoint(),
            region: "garage".to_owned(),
            bucket: BUCKET.to_owned(),
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
        }
    }
}

impl Drop for GarageCluster {
    fn drop(&mut self) {
        for i in 0..NODES {
            self.stop_node(i);
        }
        if std::thread::panicking() {
            for i in 0..NODES {
                eprintln!("---- garage node {i} log (tail) ----");
                let log = self.log(i);
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            }
        }
    }
}

/// 32 bytes of hex, unique enough per cluster (time + pid; no rand dependency).
fn rpc_secret() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seed = nanos ^ (u128::from(std::process::id()) << 64);
    format!("{seed:032x}{:032x}", seed.rotate_left(37) ^ 0x5eed_cafe)
}
