//! Parses the command line, runs, and turns errors into one message per
//! cause and a documented exit code.

use clap::Parser;
use cordon::cli::{Cli, Command};
use cordon::{exit, plan::Plan};
use std::process::ExitCode;

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.len() == 3 && argv[1] == "__janitor" {
        cordon::janitor::main(std::path::Path::new(&argv[2]));
    }
    if argv.len() == 2 && argv[1] == "__ns-init" {
        cordon::backend::namespace::init::main();
    }
    // While this process has one thread and has touched little memory:
    // forked helpers then cost a fork, not an exec of cordon each.
    let pre = cordon::prefork::Prefork::early(&argv);
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // --help, --version or a usage error: the helpers are reaped
            // before clap exits (it never returns).
            drop(pre);
            e.exit()
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "warn".into()))
        .init();
    match cli.command {
        Command::Doctor => {
            cordon::doctor::print();
            ExitCode::SUCCESS
        }
        Command::Image(cmd) => image_command(cmd),
        Command::Run(args) => {
            let plan = match Plan::from_args(&args) {
                Ok(p) => p,
                Err(e) => {
                    print_chain(&e);
                    return ExitCode::from(exit::BAD_CONFIG);
                }
            };
            if let Some(line) = plan.network_source() {
                cordon::term::say(&line);
            }
            let pre = pre.keep_for(&plan);
            // One thread: PR_SET_PDEATHSIG of helpers is tied to the spawning
            // thread, which must live as long as the run.
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let rt = match rt {
                Ok(rt) => rt,
                Err(e) => {
                    print_chain(&e);
                    return ExitCode::from(exit::INTERNAL);
                }
            };
            let res = rt.block_on(cordon::run::run(plan, pre));
            // Never wait for blocking tasks (an artifact being staged when the
            // run was cancelled): the run is over.
            rt.shutdown_background();
            match res {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    print_chain(&e);
                    ExitCode::from(e.exit_code())
                }
            }
        }
    }
}

/// One line per cause; guest-supplied text in them is sanitized, and a
/// closed stderr is ignored.
fn print_chain(e: &dyn std::error::Error) {
    use std::io::Write;
    let clean = cordon::term::sanitize;
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "cordon: error: {}", clean(&e.to_string()));
    let mut src = e.source();
    while let Some(s) = src {
        let _ = writeln!(err, "  caused by: {}", clean(&s.to_string()));
        src = s.source();
    }
}

fn image_command(cmd: cordon::cli::ImageCommand) -> ExitCode {
    use cordon::cli::ImageCommand;
    use cordon::image::{self, progress::Progress, userland};
    let log = |m: &str| eprintln!("cordon: {}", cordon::term::sanitize_line(m));
    let res = match cmd {
        ImageCommand::Build { name, suite, packages, kernel, refresh, quiet, agent } => match name.as_str() {
            "default" => {
                if !packages.is_empty() || suite != userland::DEFAULT_SUITE {
                    eprintln!("cordon: error: --suite and --packages are for `cordon image build debian`");
                    return ExitCode::from(exit::BAD_CONFIG);
                }
                let agent = match cordon::backend::find_agent(agent.as_deref()) {
                    Ok(a) => a,
                    Err(e) => {
                        print_chain(&e);
                        return ExitCode::from(exit::BACKEND_UNAVAILABLE);
                    }
                };
                if kernel == image::KernelChoice::Cordon {
                    if let Err(code) = build_cordon_kernel() {
                        return code;
                    }
                }
                image::build_default(&agent, kernel, refresh, &log).map(|img| {
                    println!("{} {} {}", img.meta.id, img.meta.name, img.dir.display());
                })
            }
            "debian" => {
                if let Err(why) = userland::check_suite(&suite) {
                    eprintln!("cordon: error: --suite: {why}");
                    return ExitCode::from(exit::BAD_CONFIG);
                }
                let spec = userland::ImageSpec::Debian { suite, packages: vec![] };
                let spec = match spec.with_packages(&packages) {
                    Ok(s) => s,
                    Err(why) => {
                        eprintln!("cordon: error: --packages: {why}");
                        return ExitCode::from(exit::BAD_CONFIG);
                    }
                };
                let progress = Progress::auto(quiet, &log);
                let built = if refresh {
                    userland::refresh(&spec, &progress)
                } else {
                    userland::resolve(&spec, None, &progress)
                };
                built.map(|u| {
                    if let Some(u) = u {
                        println!("{} {} {}", u.meta.id, u.meta.name, u.dir.display());
                    }
                })
            }
            other => {
                eprintln!(
                    "cordon: error: unknown image {other:?}: `default` and `debian` can be built; \
                     other images come from `cordon image import`"
                );
                return ExitCode::from(exit::BAD_CONFIG);
            }
        },
        ImageCommand::Import { path, name, quiet } => {
            let progress = Progress::auto(quiet, &log);
            import_image(&path, name, &progress)
        }
        ImageCommand::Ls => image::list().map(|imgs| {
            println!("{:<18} {:<32} {:>8} {:>6}  FROM", "ID", "NAME", "SIZE", "AGE");
            let age = |secs: u64| match secs {
                s if s < 3600 => format!("{}m", s / 60),
                s if s < 86400 => format!("{}h", s / 3600),
                s => format!("{}d", s / 86400),
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            for i in imgs {
                let size: u64 = ["vmlinuz", "initramfs.cpio"]
                    .iter()
                    .filter_map(|f| std::fs::metadata(i.dir.join(f)).ok())
                    .map(|m| m.len())
                    .sum();
                println!(
                    "{:<18} {:<32} {:>6}MB {:>6}  kernel {} + busybox, agent, {} modules",
                    i.meta.id,
                    i.meta.name,
                    size >> 20,
                    age(now.saturating_sub(i.meta.created_unix)),
                    i.meta.kernel_release,
                    i.meta.modules.len() + i.meta.root_modules.len()
                );
            }
            for u in userland::list() {
                println!(
                    "{:<18} {:<32} {:>6}MB {:>6}  {}",
                    u.meta.id,
                    cordon::term::sanitize_line(&u.meta.name),
                    u.size() >> 20,
                    age(now.saturating_sub(u.meta.created_unix)),
                    cordon::term::sanitize_line(&u.meta.source.describe())
                );
            }
        }),
        ImageCommand::Rm { which } => {
            let boot = image::remove(&which);
            let user = userland::remove(&which);
            let removed = match (boot, user) {
                (Err(image::ImageError::NotFound(_)), Ok(0)) => Err(image::ImageError::NotFound(which)),
                (Ok(a), Ok(b)) => Ok(a + b),
                (Err(image::ImageError::NotFound(_)), Ok(n)) => Ok(n),
                (_, Err(e)) | (Err(e), _) => Err(e),
            };
            removed.map(|n| println!("removed {n} image(s)"))
        }
        ImageCommand::Prune { unused_for } => {
            let idle = match unused_for.trim() {
                "0" => 0,
                s => match cordon::duration::parse(s) {
                    Ok(d) => d.as_secs(),
                    Err(why) => {
                        eprintln!("cordon: error: --unused-for: {why}");
                        return ExitCode::from(exit::BAD_CONFIG);
                    }
                },
            };
            userland::prune(idle, false).map(|gone| {
                for u in &gone {
                    println!("removed {} {}", u.meta.id, cordon::term::sanitize_line(&u.meta.name));
                }
                println!("removed {} image(s)", gone.len());
            })
        }
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            print_chain(&e);
            let code = match e {
                image::ImageError::NotFound(_) | image::ImageError::BadSpec(_) => exit::BAD_CONFIG,
                _ => exit::BACKEND_UNAVAILABLE,
            };
            ExitCode::from(code)
        }
    }
}

/// Runs kernel-config/build.sh from cordon's source tree (beside the
/// binary, or the working directory): cached, it returns at once.
fn build_cordon_kernel() -> Result<(), ExitCode> {
    let arch = std::env::consts::ARCH;
    let exe = std::env::current_exe().ok();
    let candidates = [
        exe.as_ref().and_then(|e| e.parent()?.parent()?.parent().map(|r| r.join("kernel-config/build.sh"))),
        Some(std::path::PathBuf::from("kernel-config/build.sh")),
    ];
    let Some(script) = candidates.into_iter().flatten().find(|p| p.is_file()) else {
        eprintln!(
            "cordon: error: kernel-config/build.sh is not beside this cordon binary or in the working \
             directory: run it from cordon's source tree (`kernel-config/build.sh {arch}`)"
        );
        return Err(ExitCode::from(exit::BACKEND_UNAVAILABLE));
    };
    eprintln!("cordon: building cordon's kernel with {} (cached after the first time)", script.display());
    let st = std::process::Command::new("bash").arg(&script).arg(arch).stdout(std::process::Stdio::null()).status();
    match st {
        Ok(s) if s.success() => Ok(()),
        other => {
            eprintln!("cordon: error: {} {arch} failed: {other:?}", script.display());
            Err(ExitCode::from(exit::BACKEND_UNAVAILABLE))
        }
    }
}

/// `cordon image import`: unpack into a staging tree, then pack and register.
fn import_image(
    path: &std::path::Path,
    name: Option<String>,
    progress: &cordon::image::progress::Progress,
) -> Result<(), cordon::image::ImageError> {
    use cordon::image::{userland, ImageError};
    let name = match name {
        Some(n) => n,
        None => {
            let f = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            f.split('.').next().unwrap_or_default().to_string()
        }
    };
    userland::check_image_name(&name).map_err(ImageError::BadSpec)?;
    let tmp = userland::staging()?;
    progress.stage(&format!("importing {} as {name}", path.display()));
    // Ctrl-C and SIGTERM stop the unpacking between entries; the staging
    // dir is then removed as the error unwinds.
    static CANCEL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    extern "C" fn on_signal(_: libc::c_int) {
        CANCEL.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let info = cordon::image::import::unpack(path, &tmp.path().join("tree"), &CANCEL, &|m| progress.detail(m))
        .map_err(|e| ImageError::BadSpec(format!("importing {}: {e}", path.display())))?;
    let source = userland::Source::Import {
        path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()).display().to_string(),
        what: info.describe(),
    };
    let u = userland::register_import(tmp, &name, source, progress)?;
    println!("{} {} {}", u.meta.id, u.meta.name, u.dir.display());
    Ok(())
}
