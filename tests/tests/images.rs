//! Real userlands on both backends: the Debian image (mmdebstrap, erofs
//! under an overlay in the VM, the same tree in namespaces), per-job
//! packages, imported tarballs and OCI layouts, concurrent builds, and a
//! workspace larger than the guest's memory.
//!
//! scripts/test.sh builds the Debian image before the suite runs; a test
//! that finds it missing builds it (the build lock serializes them).

mod common;
#[macro_use]
mod backends;

use backends::{cordon, text, Backend};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

backend_tests!(
    both: [
        test_debian_compiles_c_and_runs_python_with_the_binary_as_artifact,
        test_wheel_with_a_c_extension_builds_from_its_sdist_offline,
        test_imported_tarball_and_oci_layout_each_run_a_job,
        test_workspace_larger_than_the_guest_memory_is_copied_in_whole,
        test_steps_have_a_writable_home_and_no_agent_settings,
    ],
);

fn write(dir: &Path, rel: &str, body: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, body).unwrap();
}

/// A short unique suffix for image names this run imports.
fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}-{}-{}", std::process::id(), n % 1_000_000_007)
}

fn test_debian_compiles_c_and_runs_python_with_the_binary_as_artifact(b: Backend) {
    let ws = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    write(
        ws.path(),
        "hello.c",
        "#include <stdio.h>\nint main(void){printf(\"hello from %s\\n\", \"gcc\");return 0;}\n",
    );
    write(ws.path(), "sum.py", "import sys\nprint('python', sys.version_info[0], sum(range(10)))\n");
    let (code, stdout, stderr) = b.sh(
        &[
            "--image",
            "debian",
            "--no-build",
            "--workspace",
            ws.path().to_str().unwrap(),
            "--artifact",
            "out",
            "--artifacts-dir",
            out.path().to_str().unwrap(),
        ],
        "set -e; mkdir -p out; gcc -O2 -o out/hello hello.c; ./out/hello; python3 sum.py | tee out/py.txt",
    );
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("hello from gcc"), "{stdout}");
    assert!(stdout.contains("python 3 45"), "{stdout}");
    // The binary came back and is a real Debian bookworm executable: it
    // runs on this (Debian 12) host.
    let bin = out.path().join("out/hello");
    let ran = std::process::Command::new(&bin).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "hello from gcc\n");
    assert_eq!(std::fs::read_to_string(out.path().join("out/py.txt")).unwrap(), "python 3 45\n");
}

/// An sdist of a package with a C extension, made here.
fn make_sdist(dir: &Path) -> PathBuf {
    let src = tempfile::tempdir().unwrap();
    let root = src.path().join("cordonspam-1.0");
    write(
        &root,
        "setup.py",
        "from setuptools import setup, Extension\n\
         setup(name='cordonspam', version='1.0', ext_modules=[Extension('cordonspam', ['spam.c'])])\n",
    );
    write(
        &root,
        "spam.c",
        "#include <Python.h>\n\
         static PyObject *add(PyObject *s, PyObject *a) { long x, y;\n\
           if (!PyArg_ParseTuple(a, \"ll\", &x, &y)) return NULL; return PyLong_FromLong(x + y); }\n\
         static PyMethodDef m[] = {{\"add\", add, METH_VARARGS, \"\"}, {NULL, NULL, 0, NULL}};\n\
         static struct PyModuleDef d = {PyModuleDef_HEAD_INIT, \"cordonspam\", NULL, -1, m};\n\
         PyMODINIT_FUNC PyInit_cordonspam(void) { return PyModule_Create(&d); }\n",
    );
    write(&root, "PKG-INFO", "Metadata-Version: 2.1\nName: cordonspam\nVersion: 1.0\n");
    write(
        &root,
        "pyproject.toml",
        "[build-system]\nrequires = ['setuptools', 'wheel']\nbuild-backend = 'setuptools.build_meta'\n",
    );
    let path = dir.join("cordonspam-1.0.tar.gz");
    let f = std::fs::File::create(&path).unwrap();
    let gz = gzip_to(f);
    let mut t = tar::Builder::new(gz);
    t.append_dir_all("cordonspam-1.0", &root).unwrap();
    t.into_inner().unwrap().finish().unwrap();
    path
}

/// gzip through the host's `gzip` (the tests crate has no deflate crate).
struct Gzip {
    child: std::process::Child,
}

impl Write for Gzip {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.child.stdin.as_mut().unwrap().write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.child.stdin.as_mut().unwrap().flush()
    }
}

impl Gzip {
    fn finish(mut self) -> std::io::Result<()> {
        drop(self.child.stdin.take());
        let st = self.child.wait()?;
        assert!(st.success());
        Ok(())
    }
}

fn gzip_to(out: std::fs::File) -> Gzip {
    let child =
        std::process::Command::new("gzip").arg("-c").stdin(std::process::Stdio::piped()).stdout(out).spawn().unwrap();
    Gzip { child }
}

/// The build dependencies, fetched on the host from PyPI (pure-Python wheels).
fn fetch_build_deps(dir: &Path) {
    let st = std::process::Command::new("python3")
        .args(["-m", "pip", "download", "--quiet", "--only-binary=:all:", "--dest"])
        .arg(dir)
        .args(["setuptools==69.5.1", "wheel==0.43.0"])
        .status()
        .unwrap();
    assert!(st.success(), "pip download of the build dependencies failed (is PyPI reachable?)");
}

fn test_wheel_with_a_c_extension_builds_from_its_sdist_offline(b: Backend) {
    let ws = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    make_sdist(ws.path());
    fetch_build_deps(&ws.path().join("deps"));
    let script = "set -e; \
        python3 -m pip wheel --no-index --find-links deps --wheel-dir dist cordonspam-1.0.tar.gz; \
        python3 -m pip install --no-index --target /tmp/t dist/cordonspam-*.whl >/dev/null; \
        PYTHONPATH=/tmp/t python3 -c 'import cordonspam; print(\"add:\", cordonspam.add(40, 2))'";
    let (code, stdout, stderr) = b.sh(
        &[
            "--image",
            "debian",
            "--no-build",
            "--net",
            "none",
            "--workspace",
            ws.path().to_str().unwrap(),
            "--artifact",
            "dist",
            "--artifacts-dir",
            out.path().to_str().unwrap(),
        ],
        script,
    );
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("add: 42"), "{stdout}");
    let wheels: Vec<PathBuf> = std::fs::read_dir(out.path().join("dist"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "whl"))
        .collect();
    assert_eq!(wheels.len(), 1, "{wheels:?}");
    let name = wheels[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("cordonspam-1.0-cp311-cp311-linux_"), "a binary wheel, not a pure one: {name}");
    // The wheel holds the compiled extension.
    let listing = std::process::Command::new("python3").args(["-m", "zipfile", "-l"]).arg(&wheels[0]).output().unwrap();
    assert!(String::from_utf8_lossy(&listing.stdout).contains(".so"), "{listing:?}");
}

fn tar_file(t: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(mode);
    h.set_size(data.len() as u64);
    h.set_mtime(1_700_000_000);
    t.append_data(&mut h, path, data).unwrap();
}

fn tar_link(t: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    h.set_size(0);
    t.append_link(&mut h, path, target).unwrap();
}

fn tar_dir(t: &mut tar::Builder<Vec<u8>>, path: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    t.append_data(&mut h, path, &[][..]).unwrap();
}

/// A minimal rootfs layer: static busybox as /bin/sh and `cat`, and files.
fn busybox_layer(files: &[(&str, &str)]) -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    for d in ["bin", "etc"] {
        tar_dir(&mut t, d);
    }
    tar_file(&mut t, "bin/busybox", 0o755, &std::fs::read("/bin/busybox").unwrap());
    for applet in ["sh", "cat", "test", "ls"] {
        tar_link(&mut t, &format!("bin/{applet}"), "busybox");
    }
    for (p, body) in files {
        tar_file(&mut t, p, 0o644, body.as_bytes());
    }
    t.into_inner().unwrap()
}

fn files_layer(files: &[(&str, &str)]) -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    tar_dir(&mut t, "etc");
    for (p, body) in files {
        tar_file(&mut t, p, 0o644, body.as_bytes());
    }
    t.into_inner().unwrap()
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Writes an OCI image layout of `layers` (uncompressed tars) in `dir`.
fn oci_layout(dir: &Path, layers: &[Vec<u8>]) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |b: &[u8]| -> (String, usize) {
        let d = sha(b);
        std::fs::write(blobs.join(&d), b).unwrap();
        (format!("sha256:{d}"), b.len())
    };
    let diff_ids: Vec<String> = layers.iter().map(|l| format!("sha256:{}", sha(l))).collect();
    let arch = if cfg!(target_arch = "aarch64") { "arm64" } else { "amd64" };
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let (cd, cs) = put(&serde_json::to_vec(&config).unwrap());
    let layer_descs: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| {
            let (d, s) = put(l);
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": s})
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": layer_descs,
    });
    let (md, ms) = put(&serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
                       "platform": {"architecture": arch, "os": "linux"}}],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// Removes the named image when the test ends, passed or not.
struct Imported(String);

impl Drop for Imported {
    fn drop(&mut self) {
        let _ = cordon().args(["image", "rm", &self.0]).output();
    }
}

fn import(path: &Path, name: &str) -> Imported {
    let out = cordon().args(["image", "import"]).arg(path).args(["--name", name, "--quiet"]).output().unwrap();
    let (code, stdout, stderr) = text(&out);
    assert_eq!(code, 0, "import {}: {stdout}\n{stderr}", path.display());
    Imported(name.to_string())
}

fn test_imported_tarball_and_oci_layout_each_run_a_job(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    // A `docker export`-style rootfs tarball.
    let tarball = dir.path().join("rootfs.tar");
    std::fs::write(&tarball, busybox_layer(&[("etc/marker", "from the tarball\n")])).unwrap();
    let tar_name = unique("t-tar");
    let _t = import(&tarball, &tar_name);
    let (code, stdout, stderr) = b.sh(&["--image", &tar_name], "cat /etc/marker; test -x /bin/busybox && echo busybox");
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert_eq!(stdout, "from the tarball\nbusybox\n");

    // An OCI layout of two layers: the second replaces a file and whites
    // one out.
    let oci = dir.path().join("oci");
    let base = busybox_layer(&[("etc/marker", "layer one\n"), ("etc/gone", "must be whited out\n")]);
    let top = files_layer(&[("etc/marker", "layer two\n"), ("etc/.wh.gone", "")]);
    oci_layout(&oci, &[base, top]);
    let oci_name = unique("t-oci");
    let _o = import(&oci, &oci_name);
    let (code, stdout, stderr) =
        b.sh(&["--image", &oci_name], "cat /etc/marker; if test -e /etc/gone; then echo present; else echo gone; fi");
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert_eq!(stdout, "layer two\ngone\n");
    // `image ls` shows both with what they came from.
    let ls = text(&cordon().args(["image", "ls"]).output().unwrap()).1;
    let line = |n: &str| ls.lines().find(|l| l.contains(n)).map(str::to_string).unwrap_or_default();
    assert!(line(&tar_name).contains("import"), "{ls}");
    assert!(line(&oci_name).contains("import"), "{ls}");
}

fn test_workspace_larger_than_the_guest_memory_is_copied_in_whole(b: Backend) {
    let ws = tempfile::tempdir().unwrap();
    // 320 MiB of data that does not compress, beside a guest of 256 MiB.
    let mut h = Sha256::new();
    let mut f = std::io::BufWriter::new(std::fs::File::create(ws.path().join("big")).unwrap());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..320 {
        for c in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        h.update(&block);
        f.write_all(&block).unwrap();
    }
    f.flush().unwrap();
    drop(f);
    let want = hex::encode(h.finalize());
    let (code, stdout, stderr) = b.sh(
        &["--image", "debian", "--no-build", "--memory", "256M", "--workspace", ws.path().to_str().unwrap()],
        "free -m | head -2; sha256sum /workspace/big",
    );
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains(&format!("{want}  /workspace/big")), "want {want}: {stdout}");
}

/// `--package` makes a derived image once; the next run reuses it.
#[test]
fn test_per_job_package_builds_a_derived_image_once() {
    let ns = Backend::Namespace;
    // Positive control for the negative: the base image lacks jq.
    let (code, _, _) = ns.sh(&["--image", "debian", "--no-build"], "command -v jq");
    assert_ne!(code, 0, "the base image already has jq: pick another package");
    let (code, stdout, stderr) = ns.sh(&["--image", "debian", "--package", "jq"], "echo '{\"a\": 41}' | jq '.a + 1'");
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert_eq!(stdout.trim(), "42");
    let ls = text(&cordon().args(["image", "ls"]).output().unwrap()).1;
    let entry = ls.lines().find(|l| l.contains("debian+jq")).unwrap_or_else(|| panic!("{ls}")).to_string();
    let id = entry.split_whitespace().next().unwrap().to_string();
    let dir = cordon::image::userland::userlands_dir().join(&id);
    let made = std::fs::metadata(dir.join("rootfs.erofs")).unwrap().modified().unwrap();
    // Again, on the VM this time, with --no-build: the derived image is
    // found, not rebuilt.
    let vm = Backend::Vm;
    let (code, stdout, stderr) =
        vm.sh(&["--image", "debian", "--package", "jq", "--no-build"], "echo '[1,2,3]' | jq length");
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert_eq!(stdout.trim(), "3");
    assert!(!stderr.contains("building image"), "{stderr}");
    assert_eq!(std::fs::metadata(dir.join("rootfs.erofs")).unwrap().modified().unwrap(), made, "rebuilt");
    // --no-build names the command for a set nobody built.
    let (code, _, stderr) = ns.sh(&["--image", "debian", "--package", "sl", "--no-build"], "true");
    assert_ne!(code, 0);
    assert!(stderr.contains("cordon image build debian --packages sl"), "{stderr}");
}

/// Two `cordon image build debian` at once in an empty cache: both succeed
/// and leave one image (the .debs are seeded from the shared cache so the
/// test does not download them again).
#[test]
fn test_concurrent_builds_of_one_image_both_succeed_leaving_one_entry() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: building a Debian image needs root (mmdebstrap runs package scripts as root)");
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let shared_debs = cordon::image::cache_dir().join("debs");
    std::fs::create_dir_all(cache.path().join("cordon")).unwrap();
    if shared_debs.exists() {
        let st = std::process::Command::new("cp")
            .arg("-al")
            .arg(&shared_debs)
            .arg(cache.path().join("cordon/debs"))
            .status();
        if !matches!(st, Ok(s) if s.success()) {
            let _ = std::process::Command::new("cp")
                .arg("-a")
                .arg(&shared_debs)
                .arg(cache.path().join("cordon/debs"))
                .status();
        }
    }
    let build = || {
        cordon()
            .env("XDG_CACHE_HOME", cache.path())
            .args(["image", "build", "debian", "--quiet"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (build(), build());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    for o in [&a, &b] {
        let (code, stdout, stderr) = text(o);
        assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    }
    // Both name the same image.
    assert_eq!(text(&a).1, text(&b).1);
    let entries: Vec<String> = std::fs::read_dir(cache.path().join("cordon/userlands"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries.len(), 1, "one image and nothing half-built: {entries:?}");
}

/// A run holds its image: `image rm` refuses while the step runs and
/// succeeds once it ended.
#[test]
fn test_an_image_in_use_is_not_removed() {
    let dir = tempfile::tempdir().unwrap();
    let tarball = dir.path().join("rootfs.tar");
    std::fs::write(&tarball, busybox_layer(&[("etc/marker", "in use\n")])).unwrap();
    let name = unique("t-busy");
    let imported = import(&tarball, &name);
    let mut run = Backend::Namespace.run(&["--image", &name, "--", "sh", "-c", "cat /etc/marker; sleep 4; echo done"]);
    let mut child = run.stdout(std::process::Stdio::piped()).spawn().unwrap();
    // The step has started (so the run holds its image) once it printed.
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    assert_eq!(first, "in use\n");
    let (code, _, stderr) = text(&cordon().args(["image", "rm", &name]).output().unwrap());
    assert_ne!(code, 0, "removed an image a run was using");
    assert!(stderr.contains("in use"), "{stderr}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(rest, "done\n", "the run kept its image");
    let (code, stdout, stderr) = text(&cordon().args(["image", "rm", &name]).output().unwrap());
    assert_eq!(code, 0, "{stdout}{stderr}");
    std::mem::forget(imported);
}

/// A job file from an untrusted checkout may not make the host build a
/// derived image (root runs package scripts with the host's network);
/// `--trust-job` lifts that.
#[test]
fn test_an_untrusted_job_file_cannot_build_a_derived_image() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("cordon.toml");
    std::fs::write(&job, "image = { base = 'debian', packages = ['cowsay'] }\n[[steps]]\nrun = 'true'\n").unwrap();
    let ns = Backend::Namespace;
    let (code, _, stderr) = text(&ns.output(&["-f", job.to_str().unwrap()]));
    assert_eq!(code, 120, "{stderr}");
    assert!(stderr.contains("--trust-job") && stderr.contains("--packages cowsay"), "{stderr}");
    assert!(!stderr.contains("building image"), "{stderr}");
    // Trusted, the only thing between it and a build is --no-build here
    // (the test does not spend a build on it).
    let (code, _, stderr) = text(&ns.output(&["-f", job.to_str().unwrap(), "--trust-job", "--no-build"]));
    assert_eq!(code, 120, "{stderr}");
    assert!(stderr.contains("--no-build was given"), "{stderr}");
}

/// Tools that want a home find a writable one, and the agent's own
/// settings do not reach the step.
fn test_steps_have_a_writable_home_and_no_agent_settings(b: Backend) {
    let (code, stdout, stderr) = b.sh(
        &["--image", "debian", "--no-build"],
        "git config --global user.name cordon && git config --global user.name; env | grep -c '^CORDON_' || true",
    );
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert_eq!(stdout, "cordon\n0\n");
}
