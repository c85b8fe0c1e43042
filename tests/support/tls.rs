//! A TLS front for a plain-HTTP peer, as a venue's private object store would have: a
//! throwaway CA and a server certificate for 127.0.0.1 made with the `openssl` CLI, and
//! `socat` terminating TLS (OpenSSL's implementation, not ours) and forwarding to the peer.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::wait_for;

pub struct TlsFront {
    dir: tempfile::TempDir,
    child: Child,
    addr: SocketAddr,
}

impl TlsFront {
    /// Listens on an ephemeral loopback port and forwards every connection to `target`.
    pub fn start(target: SocketAddr) -> TlsFront {
        let dir = tempfile::tempdir().expect("tempdir");
        make_certificates(dir.path());
        // Pick a free port; socat binds it right after (loopback, nothing else races here).
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let cert = dir.path().join("server.pem");
        let key = dir.path().join("server.key");
        let child = Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
                addr.port(),
                cert.display(),
                key.display()
            ))
            .arg(format!("TCP:{target}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat must be installed (see scripts/install-test-deps.sh)");
        wait_for("socat listening", Duration::from_secs(10), || {
            TcpStream::connect(addr).ok()
        });
        TlsFront { dir, child, addr }
    }

    /// `https://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The PEM of the CA that signed the server certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA (`ca.pem`) and a server certificate for IP 127.0.0.1 that it signed
/// (`server.pem`, `server.key`), P-256 keys, valid for two days.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl must be installed (see scripts/install-test-deps.sh)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let p256 = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    openssl(
        &[
            &[
                "req",
                "-x509",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=edgerec test CA",
            ][..],
            &p256,
            &["-keyout", "ca.key", "-out", "ca.pem"],
            &["-addext", "basicConstraints=critical,CA:TRUE"],
            &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req", "-nodes", "-subj", "/CN=127.0.0.1"][..],
            &p256,
            &["-keyout", "server.key", "-out", "server.csr"],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
}
