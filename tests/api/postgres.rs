//! A real PostgreSQL cluster per test: initdb into a temp dir, `postgres` on an ephemeral port
//! of 127.0.0.1 with its socket in that dir, stopped by PID on drop. As root (CI) both run as
//! the `postgres` user Debian's package creates, since initdb refuses root.
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub struct Postgres {
    /// `postgres://postgres@127.0.0.1:PORT/llmux`
    pub url: String,
    pub port: u16,
    server: Option<Child>,
    dir: TempDir,
}

fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (.ci/run installs Debian's postgresql package)")
        .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
        .filter(|bin| bin.join("postgres").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("a PostgreSQL server under /usr/lib/postgresql/*/bin")
}

fn output(command: &mut Command) -> String {
    let output = command.output().expect("command runs");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The `postgres` user's uid and gid when we are root; `None` runs as ourselves.
fn server_user() -> Option<(u32, u32)> {
    if output(Command::new("id").arg("-u")) != "0" {
        return None;
    }
    let uid = output(Command::new("id").args(["-u", "postgres"]));
    let gid = output(Command::new("id").args(["-g", "postgres"]));
    Some((
        uid.parse().expect("a postgres user exists"),
        gid.parse().expect("a postgres group exists"),
    ))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Postgres {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// On a port chosen before (a test starts llmux against it while nothing listens there).
    pub fn start_on(port: u16) -> Self {
        Self::start_with(Some(port))
    }

    fn start_with(fixed_port: Option<u16>) -> Self {
        let bin = bin_dir();
        let mut dir = tempfile::tempdir().unwrap();
        let user = server_user();
        let data = dir.path().join("data");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "--no-locale",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = user {
            initdb.uid(uid).gid(gid);
        }
        let initialized = initdb.output().unwrap();
        assert!(
            initialized.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initialized.stderr)
        );
        // A port taken between here and the server's bind makes the start fail: try a few.
        for _ in 0..5 {
            let port = fixed_port.unwrap_or_else(free_port);
            let mut server = Command::new(bin.join("postgres"));
            server
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-k"])
                .arg(dir.path())
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "max_connections=50",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Some((uid, gid)) = user {
                server.uid(uid).gid(gid);
            }
            let child = server.spawn().unwrap();
            let mut postgres = Self {
                url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
                port,
                server: Some(child),
                dir,
            };
            if postgres.wait_ready(&bin, Duration::from_secs(30)) {
                let created = Command::new(bin.join("psql"))
                    .args([
                        "-h",
                        "127.0.0.1",
                        "-p",
                        &port.to_string(),
                        "-U",
                        "postgres",
                        "-c",
                    ])
                    .arg("CREATE DATABASE llmux")
                    .stdout(Stdio::null())
                    .status()
                    .unwrap();
                assert!(created.success(), "CREATE DATABASE llmux");
                postgres.url = format!("postgres://postgres@127.0.0.1:{port}/llmux");
                return postgres;
            }
            postgres.stop();
            dir = std::mem::replace(&mut postgres.dir, tempfile::tempdir().unwrap());
        }
        panic!("PostgreSQL did not start");
    }

    fn wait_ready(&mut self, bin: &std::path::Path, deadline: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < deadline {
            if let Some(server) = self.server.as_mut() {
                if server.try_wait().unwrap().is_some() {
                    return false;
                }
            }
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-t", "1"])
                .stdout(Stdio::null())
                .status()
                .unwrap();
            if ready.success() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Stops the server (immediate shutdown), by its PID; waits for it with a deadline.
    pub fn stop(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-QUIT", &server.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if server.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = server.kill();
        let _ = server.wait();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
