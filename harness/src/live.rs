//! Running a reference dumper (`references/<name>/dump.py`) in the reference environment, with a
//! timeout, keeping its stderr.

use crate::reference::{dumper_of, RefName};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Why a reference could not produce a dump. The harness exits 3 for these, never 1: a broken
/// reference is not a numerical mismatch.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("{reference}: reference environment not found at {python}; run scripts/setup-references.sh")]
    NotInstalled { reference: String, python: PathBuf },
    #[error("{reference}: no finished environment at {} for that release; run scripts/setup-reference-version.sh {dumper} {version}", env.display())]
    ReleaseNotInstalled { reference: String, dumper: String, version: String, env: PathBuf },
    #[error("{reference}: no dumper at {path}")]
    NoDumper { reference: String, path: PathBuf },
    #[error("{reference}: timed out after {seconds} s (killed); stderr kept in {log}")]
    Timeout { reference: String, seconds: u64, log: PathBuf },
    #[error("{reference}: exited with {status}: {last_line} (stderr in {log})")]
    Failed { reference: String, status: String, last_line: String, log: PathBuf },
    #[error("{reference}: could not start {python}: {source}")]
    Spawn { reference: String, python: PathBuf, source: std::io::Error },
    #[error("reading the dumpers' identity at {}: {source}", path.display())]
    Identity { path: PathBuf, source: std::io::Error },
    #[error("{reference}: could not open its stderr log {log} (a symlink there is refused): {source}")]
    Log { reference: String, log: PathBuf, source: std::io::Error },
}

/// What every dumper is asked for.
pub struct DumpRequest<'a> {
    pub model: &'a Path,
    pub prompt: &'a str,
    pub n_generate: usize,
    pub temperature: f32,
    pub threads: usize,
    /// A decode history to teacher-force (`--force-tokens`): the truth's greedy tokens.
    pub force_tokens: Option<&'a [i64]>,
    /// The logits the samplers sample (`--sampler-logits`, a .npy): the truth's last logits.
    pub sampler_logits: Option<&'a Path>,
    pub out: &'a Path,
}

/// The environment every dumper runs in. Every reference computes in f32 for the tight
/// comparison: llama.cpp's default KV cache is f16, which alone flips SmolLM2's greedy
/// continuation (see docs/references.md).
pub const DUMPER_ENV: [(&str, &str); 3] = [("DEV", "CPU"), ("HALF", "0"), ("PARITY_LLAMACPP_KV_TYPE", "f32")];

pub struct Dumpers {
    pub root: PathBuf,
    pub python: PathBuf,
    pub timeout: Duration,
}

impl Dumpers {
    /// The environment `scripts/setup-references.sh` made: `$PARITY_CACHE/venv` (default
    /// `~/.cache/parity/venv`).
    pub fn from_env(root: &Path, timeout: Duration) -> Dumpers {
        Dumpers { root: root.to_path_buf(), python: crate::suite::parity_cache().join("venv/bin/python"), timeout }
    }

    /// The Python `reference`'s dumper runs in: the shared environment, or `venv-<reference>`
    /// beside the shared `venv` for a reference that pins its own packages
    /// (`references/<reference>/requirements.txt`, whose pins clash with the shared ones, made by
    /// setup-references.sh) and for a pinned release (`llamacpp@0.3.20`, made by
    /// setup-reference-version.sh).
    pub fn python_for(&self, reference: &str) -> PathBuf {
        let own = self.root.join("references").join(dumper_of(reference)).join("requirements.txt").is_file();
        let pinned = reference.contains('@');
        match self.python.parent().and_then(Path::parent).and_then(Path::parent) {
            Some(envs) if own || pinned => envs.join(format!("venv-{reference}")).join("bin/python"),
            _ => self.python.clone(),
        }
    }

    /// sha256 of what every dump `reference`'s dumper makes depends on besides its request: its
    /// source (the `.py` files but tests of `references/<reference>/`, of every sibling folder its
    /// sources name in quotes, as `pytorch-f64` names `"pytorch"` and every dumper `"common"`: path
    /// and text), the packages installed in the reference environment (their `.dist-info` names
    /// carry the versions), the environment's Python (`pyvenv.cfg`) and [`DUMPER_ENV`]. Any change
    /// to these is a new key for that reference's dumps, and only for them.
    pub fn identity(&self, reference: &str) -> Result<String, ReferenceError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ReferenceError::Identity { path, source }
        };
        let mut text = format!("dumper v2 {reference}\n");
        for (name, value) in DUMPER_ENV {
            text += &format!("env {name}={value}\n");
        }
        let references = self.root.join("references");
        let folders = dumper_folders(&references, dumper_of(reference)).map_err(err(&references))?;
        let mut sources = Vec::new();
        for folder in &folders {
            python_sources(&references.join(folder), &mut sources).map_err(err(&references.join(folder)))?;
        }
        sources.sort();
        for path in sources {
            let body = std::fs::read(&path).map_err(err(&path))?;
            let name = path.strip_prefix(&self.root).unwrap_or(&path).display().to_string();
            text += &format!("source {name} {}\n", reports::hashes::sha256_bytes(&body));
        }
        let python = self.python_for(reference);
        let venv = python.parent().and_then(Path::parent).unwrap_or(Path::new("/"));
        let cfg = venv.join("pyvenv.cfg");
        text += &std::fs::read_to_string(&cfg).map_err(err(&cfg))?;
        let mut packages = Vec::new();
        let lib = venv.join("lib");
        for python in std::fs::read_dir(&lib).map_err(err(&lib))? {
            let site = python.map_err(err(&lib))?.path().join("site-packages");
            for item in std::fs::read_dir(&site).into_iter().flatten().flatten() {
                let name = item.file_name().to_string_lossy().into_owned();
                if name.ends_with(".dist-info") {
                    packages.push(name);
                }
            }
        }
        packages.sort();
        text += &format!("packages {}\n", packages.join(" "));
        Ok(reports::hashes::sha256_bytes(text.as_bytes()))
    }

    /// Runs one dumper; its stderr goes to `log`. The dump folder appears only when the dumper
    /// finished (it writes to a temporary folder and renames).
    pub fn run(&self, reference: &str, req: &DumpRequest, log: &Path) -> Result<(), ReferenceError> {
        let script = self.root.join("references").join(dumper_of(reference)).join("dump.py");
        let python = self.python_for(reference);
        if let Ok(name) = RefName::parse(reference) {
            if let Some(version) = name.version() {
                // The setup script writes its stamp last: an environment without it is half made.
                let env = python.parent().and_then(Path::parent).unwrap_or(Path::new("/")).to_path_buf();
                if !env.join(".parity-setup-done").is_file() {
                    return Err(ReferenceError::ReleaseNotInstalled {
                        reference: reference.into(),
                        dumper: name.dumper().into(),
                        version: version.into(),
                        env,
                    });
                }
            }
        }
        if !python.exists() {
            return Err(ReferenceError::NotInstalled { reference: reference.into(), python });
        }
        if !script.exists() {
            return Err(ReferenceError::NoDumper { reference: reference.into(), path: script });
        }
        let mut command = Command::new(&python);
        command.arg(&script);
        self.run_command(reference, command, &python, req, log)
    }

    /// Runs an outside dumper, `line` as a shell command line with the contract's options
    /// appended (`sh -c 'LINE "$@"'`), under the same environment, timeout and log as ours.
    pub fn run_line(&self, name: &str, line: &str, req: &DumpRequest, log: &Path) -> Result<(), ReferenceError> {
        let mut command = Command::new("sh");
        command.arg("-c").arg(format!("{line} \"$@\"")).arg(name);
        self.run_command(name, command, Path::new("sh"), req, log)
    }

    /// `command` given the request's options, run to its end or the timeout.
    fn run_command(&self, reference: &str, mut command: Command, program: &Path, req: &DumpRequest, log: &Path) -> Result<(), ReferenceError> {
        if let Some(dir) = log.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let stderr = open_log(log).map_err(|source| ReferenceError::Log { reference: reference.into(), log: log.into(), source })?;
        command
            .arg("--model")
            .arg(req.model)
            // One argument: a prompt starting with `-` ("-1 is negative", "--out /etc") stays the
            // prompt instead of being parsed as an option.
            .arg(format!("--prompt={}", req.prompt))
            .args(["--n-generate", &req.n_generate.to_string()])
            .args(["--temperature", &req.temperature.to_string()])
            .args(["--threads", &req.threads.to_string()])
            .args(req.force_tokens.map(|ids| format!("--force-tokens={}", ids.iter().map(i64::to_string).collect::<Vec<_>>().join(","))))
            .args(req.sampler_logits.map(|path| [std::ffi::OsStr::new("--sampler-logits"), path.as_os_str()]).into_iter().flatten())
            .arg("--out")
            .arg(req.out)
            .envs(DUMPER_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        own_process_group(&mut command);
        let mut child = command.spawn().map_err(|source| ReferenceError::Spawn { reference: reference.into(), python: program.into(), source })?;
        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    // Whatever the dumper started and left running goes with it.
                    kill_group(&mut child);
                    break status;
                }
                Ok(None) if started.elapsed() > self.timeout => {
                    kill_group(&mut child);
                    return Err(ReferenceError::Timeout { reference: reference.into(), seconds: self.timeout.as_secs(), log: log.into() });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(source) => return Err(ReferenceError::Spawn { reference: reference.into(), python: program.into(), source }),
            }
        };
        if status.success() {
            return Ok(());
        }
        Err(ReferenceError::Failed {
            reference: reference.into(),
            status: status.code().map_or_else(|| "a signal (crashed)".to_string(), |c| format!("exit code {c}")),
            last_line: last_line(log),
            log: log.into(),
        })
    }
}

/// The folders under `references` a dumper's code comes from: its own, and every sibling its
/// sources (and theirs, transitively) name as a quoted string. Naming a folder in a comment or a
/// message includes it too: too many folders only costs reuse, too few would reuse a stale dump.
fn dumper_folders(references: &Path, reference: &str) -> std::io::Result<Vec<String>> {
    let mut siblings = Vec::new();
    for item in std::fs::read_dir(references)? {
        let item = item?;
        if item.file_type()?.is_dir() {
            siblings.push(item.file_name().to_string_lossy().into_owned());
        }
    }
    let mut folders = vec![reference.to_string()];
    let mut next = 0;
    while next < folders.len() {
        let mut sources = Vec::new();
        python_sources(&references.join(&folders[next]), &mut sources)?;
        next += 1;
        for path in sources {
            let text = std::fs::read_to_string(&path)?;
            for sibling in &siblings {
                let quoted = [format!("\"{sibling}\""), format!("'{sibling}'")];
                if !folders.contains(sibling) && quoted.iter().any(|q| text.contains(q.as_str())) {
                    folders.push(sibling.clone());
                }
            }
        }
    }
    folders.sort();
    Ok(folders)
}

/// Every `.py` file under `dir` except tests (`test_*.py`) and caches.
fn python_sources(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for item in std::fs::read_dir(dir)? {
        let item = item?;
        let (path, name) = (item.path(), item.file_name().to_string_lossy().into_owned());
        if item.file_type()?.is_dir() {
            if name != "__pycache__" {
                python_sources(&path, out)?;
            }
        } else if name.ends_with(".py") && !name.starts_with("test_") {
            out.push(path);
        }
    }
    Ok(())
}

/// The dumper in a process group of its own, so a timeout kills everything it started (a
/// compiler, a worker pool), not only the interpreter; and killed too if parity dies first
/// (Linux: the parent-death signal), since a group of its own no longer gets the terminal's ^C.
fn own_process_group(command: &mut Command) {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// Kills the child's whole process group and reaps the child.
fn kill_group(child: &mut std::process::Child) {
    #[cfg(unix)]
    if let Ok(pgid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: a plain system call on the group this child leads (its pid, by process_group(0)).
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The dumper's stderr log, truncated if there, never through a symlink: a link planted at the
/// log's path would otherwise have the dumper's output written over the file it points to.
fn open_log(log: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW);
    }
    options.open(log)
}

/// A folder under the system temporary folder that only this user can enter (0700), with a name
/// nobody can guess beforehand, made fresh (never an existing folder or link); removed with its
/// contents when dropped. Live dumps go here, so no other user can read, replace or pre-plant them.
#[derive(Debug)]
pub struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    pub fn new(prefix: &str) -> std::io::Result<PrivateDir> {
        use std::hash::{BuildHasher, Hasher};
        let base = std::env::temp_dir();
        for attempt in 0u32..16 {
            // RandomState is keyed from the OS's random source: a name another user cannot predict.
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(attempt);
            h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
            let path = base.join(format!("{prefix}-{}-{:016x}", std::process::id(), h.finish()));
            let mut builder = std::fs::DirBuilder::new();
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt;
                builder.mode(0o700);
            }
            match builder.create(&path) {
                Ok(()) => return Ok(PrivateDir { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, format!("no fresh {prefix} folder in {} after 16 tries", base.display())))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn last_line(log: &Path) -> String {
    let mut text = String::new();
    let _ = std::fs::File::open(log).and_then(|mut f| f.read_to_string(&mut text));
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(no stderr)").trim().chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_root(tag: &str, script: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("parity-live-{}-{tag}", std::process::id()));
        let dir = root.join("references/fake");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("dump.py"), script).unwrap();
        root
    }

    fn request<'a>(out: &'a Path) -> DumpRequest<'a> {
        DumpRequest {
            model: Path::new("m.gguf"),
            prompt: "hi",
            n_generate: 1,
            temperature: 1.0,
            threads: 1,
            force_tokens: None,
            sampler_logits: None,
            out,
        }
    }

    fn dumpers(root: &Path, timeout_ms: u64) -> Option<Dumpers> {
        // Any python3 runs these stand-in scripts; they test the process handling, not a reference.
        let python = ["/usr/bin/python3", "/usr/local/bin/python3"].into_iter().map(PathBuf::from).find(|p| p.exists())?;
        Some(Dumpers { root: root.to_path_buf(), python, timeout: Duration::from_millis(timeout_ms) })
    }

    #[test]
    fn a_crashing_reference_reports_its_last_stderr_line() {
        let root = fake_root("crash", "import sys\nsys.stderr.write('loading\\nboom: bad tensor\\n')\nsys.exit(3)\n");
        let Some(d) = dumpers(&root, 20_000) else {
            return eprintln!("skipped: no python3 on this machine");
        };
        let err = d.run("fake", &request(&root.join("out")), &root.join("fake.log")).unwrap_err().to_string();
        assert!(err.contains("exit code 3") && err.contains("boom: bad tensor"), "{err}");
    }

    #[test]
    fn a_hanging_reference_is_killed_at_the_timeout() {
        let root = fake_root("hang", "import time\ntime.sleep(60)\n");
        let Some(d) = dumpers(&root, 300) else {
            return eprintln!("skipped: no python3 on this machine");
        };
        let started = Instant::now();
        let err = d.run("fake", &request(&root.join("out")), &root.join("fake.log")).unwrap_err();
        assert!(matches!(err, ReferenceError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn a_forced_history_and_sampler_input_are_passed_and_left_out_otherwise() {
        // The stand-in fails with its arguments as the last stderr line, which the error carries.
        let root = fake_root("argv", "import sys\nsys.stderr.write(' '.join(sys.argv[1:]) + '\\n')\nsys.exit(3)\n");
        let Some(d) = dumpers(&root, 20_000) else {
            return eprintln!("skipped: no python3 on this machine");
        };
        let out = root.join("out");
        let history = [5_i64, 0, 448];
        let logits = root.join("truth/last_logits.npy");
        let forced = DumpRequest { n_generate: 3, force_tokens: Some(&history), sampler_logits: Some(&logits), ..request(&out) };
        let err = d.run("fake", &forced, &root.join("forced.log")).unwrap_err().to_string();
        let given = format!("--force-tokens=5,0,448 --sampler-logits {} --out", logits.display());
        assert!(err.contains("--n-generate 3") && err.contains(&given), "{err}");
        let err = d.run("fake", &request(&out), &root.join("free.log")).unwrap_err().to_string();
        assert!(err.contains("--threads 1 --out") && !err.contains("--force-tokens") && !err.contains("--sampler-logits"), "{err}");
    }

    #[test]
    fn a_prompt_starting_with_a_dash_reaches_the_dumper_as_the_prompt() {
        // The stand-in parses its arguments as dumpkit does (argparse) and fails with the prompt it got.
        let script = "import argparse, sys\np = argparse.ArgumentParser()\nfor o in ('--model', '--prompt', '--n-generate', \
                      '--temperature', '--threads', '--out'):\n    p.add_argument(o)\na = p.parse_args()\n\
                      sys.stderr.write('prompt=[%s] out=[%s]\\n' % (a.prompt, a.out))\nsys.exit(3)\n";
        let root = fake_root("dash", script);
        let Some(d) = dumpers(&root, 20_000) else {
            return eprintln!("skipped: no python3 on this machine");
        };
        let out = root.join("out");
        for prompt in ["-1 is negative", "--out /etc", "--prompt"] {
            let err = d.run("fake", &DumpRequest { prompt, ..request(&out) }, &root.join("dash.log")).unwrap_err().to_string();
            assert!(err.contains(&format!("prompt=[{prompt}] out=[{}]", out.display())), "{prompt}: {err}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn the_stderr_log_is_never_written_through_a_symlink() {
        let root = fake_root("symlink", "import sys\nsys.stderr.write('dumper output\\n')\n");
        let Some(d) = dumpers(&root, 20_000) else {
            return eprintln!("skipped: no python3 on this machine");
        };
        let victim = root.join("victim.txt");
        std::fs::write(&victim, "keep me").unwrap();
        let log = root.join("planted.log");
        let _ = std::fs::remove_file(&log);
        std::os::unix::fs::symlink(&victim, &log).unwrap();
        let err = d.run("fake", &request(&root.join("out")), &log).unwrap_err();
        assert!(matches!(err, ReferenceError::Log { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
        // A plain file there is truncated and written, as before.
        let plain = root.join("plain.log");
        std::fs::write(&plain, "stale text from an earlier run\n").unwrap();
        d.run("fake", &request(&root.join("out")), &plain).unwrap();
        assert_eq!(std::fs::read_to_string(&plain).unwrap(), "dumper output\n");
    }

    #[test]
    fn a_private_temp_dir_is_fresh_owner_only_and_removed_when_dropped() {
        let a = PrivateDir::new("parity-test").unwrap();
        let b = PrivateDir::new("parity-test").unwrap();
        assert_ne!(a.path(), b.path());
        assert!(a.path().starts_with(std::env::temp_dir()) && a.path().is_dir());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(a.path()).unwrap().permissions().mode() & 0o777, 0o700);
        }
        let path = a.path().to_path_buf();
        std::fs::create_dir_all(path.join("m/p")).unwrap();
        drop(a);
        assert!(!path.exists());
    }

    #[test]
    fn a_timeout_leaves_nothing_the_dumper_started_running() {
        // The stand-in starts a grandchild that would sleep for a minute, says its pid, then hangs.
        let script = "import subprocess, sys, time\np = subprocess.Popen(['sleep', '60'])\n\
                      open(sys.argv[sys.argv.index('--out') + 1] + '.pid', 'w').write(str(p.pid))\ntime.sleep(60)\n";
        let root = fake_root("group", script);
        let Some(d) = dumpers(&root, 1_500) else {
            return eprintln!("skipped: no python3 on this machine");
        };
        let out = root.join("out");
        let err = d.run("fake", &request(&out), &root.join("group.log")).unwrap_err();
        assert!(matches!(err, ReferenceError::Timeout { .. }), "{err}");
        let pid = std::fs::read_to_string(out.with_extension("pid")).expect("the stand-in wrote its grandchild's pid");
        // Killed, and reaped by init: no /proc entry, or a zombie on its way out.
        let gone = || std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).map_or(true, |s| s.contains(") Z "));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gone() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(gone(), "the dumper's child {pid} outlived its timeout");
    }

    #[test]
    fn a_dumpers_identity_follows_its_own_source_and_what_it_names_but_not_tests_or_others() {
        let root = fake_root("identity", "import sys\nsys.path.insert(0, 'common')\n");
        let _ = std::fs::remove_dir_all(root.join("references/common"));
        let _ = std::fs::remove_dir_all(root.join("references/other"));
        let _ = std::fs::remove_dir_all(root.join("references/f64"));
        for (folder, body) in [("common", "KIT = 1\n"), ("other", "print('another dumper')\n"), ("f64", "DUMPER = 'fake' + '/dump.py'\n")] {
            std::fs::create_dir_all(root.join("references").join(folder)).unwrap();
            std::fs::write(root.join("references").join(folder).join("dump.py"), body).unwrap();
        }
        let venv = root.join("venv");
        let _ = std::fs::remove_dir_all(&venv);
        std::fs::create_dir_all(venv.join("lib/python3.11/site-packages/torch-2.5.0.dist-info")).unwrap();
        std::fs::create_dir_all(venv.join("bin")).unwrap();
        std::fs::write(venv.join("pyvenv.cfg"), "version = 3.11.2\n").unwrap();
        let d = Dumpers { root: root.clone(), python: venv.join("bin/python"), timeout: Duration::from_secs(1) };
        let ids = || ["fake", "other", "f64"].map(|r| d.identity(r).unwrap());
        let first = ids();
        assert_eq!(dumper_folders(&root.join("references"), "f64").unwrap(), ["common", "f64", "fake"], "named, and what that names");
        std::fs::write(root.join("references/fake/test_dump.py"), "assert True\n").unwrap();
        assert_eq!(ids(), first, "a test file is not part of a dumper");
        std::fs::write(root.join("references/other/dump.py"), "print('changed')\n").unwrap();
        let after_other = ids();
        assert_eq!((after_other[0].as_str(), after_other[2].as_str()), (first[0].as_str(), first[2].as_str()), "another dumper's change");
        assert_ne!(after_other[1], first[1]);
        std::fs::write(root.join("references/common/dump.py"), "KIT = 2\n").unwrap();
        let after_common = ids();
        assert!(after_common[0] != after_other[0] && after_common[2] != after_other[2], "shared code moves those that use it");
        assert_eq!(after_common[1], after_other[1], "and not a dumper that does not name it");
        std::fs::rename(
            venv.join("lib/python3.11/site-packages/torch-2.5.0.dist-info"),
            venv.join("lib/python3.11/site-packages/torch-2.5.1.dist-info"),
        )
        .unwrap();
        assert_ne!(d.identity("fake").unwrap(), after_common[0], "another torch is another dumper");
    }

    #[test]
    fn a_pinned_release_runs_the_same_dumper_in_its_own_finished_environment() {
        // The stand-in fails with the interpreter running it, which the error carries.
        let root = fake_root("release", "import sys\nsys.stderr.write(sys.executable + '\\n')\nsys.exit(3)\n");
        let Some(system) = dumpers(&root, 20_000) else {
            return eprintln!("skipped: no python3 on this machine");
        };
        let envs = root.join("envs");
        let (shared, pinned) = (envs.join("venv"), envs.join("venv-fake@1.2"));
        let _ = std::fs::remove_dir_all(&envs);
        for venv in [&shared, &pinned] {
            std::fs::create_dir_all(venv.join("bin")).unwrap();
            std::fs::create_dir_all(venv.join("lib/python3.11/site-packages")).unwrap();
            std::fs::write(venv.join("pyvenv.cfg"), "version = 3.11.2\n").unwrap();
            std::os::unix::fs::symlink(&system.python, venv.join("bin/python")).unwrap();
        }
        std::fs::create_dir_all(pinned.join("lib/python3.11/site-packages/fakelib-1.2.dist-info")).unwrap();
        let d = Dumpers { root: root.clone(), python: shared.join("bin/python"), timeout: Duration::from_secs(20) };
        assert_eq!(d.python_for("fake@1.2"), pinned.join("bin/python"));
        assert_eq!(d.python_for("fake"), shared.join("bin/python"));
        let half_made = d.run("fake@1.2", &request(&root.join("out")), &root.join("release.log")).unwrap_err().to_string();
        assert!(half_made.contains("setup-reference-version.sh fake 1.2"), "{half_made}");
        std::fs::write(pinned.join(".parity-setup-done"), "fakelib==1.2").unwrap();
        let ran = d.run("fake@1.2", &request(&root.join("out")), &root.join("release.log")).unwrap_err().to_string();
        assert!(ran.contains(&pinned.join("bin/python").display().to_string()), "{ran}");
        // Same dumper code, another environment: another identity, so its dumps are cached apart.
        assert_ne!(d.identity("fake@1.2").unwrap(), d.identity("fake").unwrap());
    }

    #[test]
    fn a_missing_environment_says_how_to_install_it() {
        let d = Dumpers { root: PathBuf::from("/nonexistent"), python: PathBuf::from("/nonexistent/python"), timeout: Duration::from_secs(1) };
        let err = d.run("pytorch", &request(Path::new("/tmp/x")), Path::new("/tmp/x.log")).unwrap_err().to_string();
        assert!(err.contains("setup-references.sh"), "{err}");
    }
}
