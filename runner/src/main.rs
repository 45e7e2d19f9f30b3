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
    let cli = Cli::parse();
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
            let res = rt.block_on(cordon::run::run(plan));
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
    use cordon::image;
    let res = match cmd {
        ImageCommand::Build { name, refresh, agent } => {
            if name != "default" {
                eprintln!("cordon: error: unknown image {name:?}: only `default` can be built");
                return ExitCode::from(exit::BAD_CONFIG);
            }
            let agent = match cordon::backend::find_agent(agent.as_deref()) {
                Ok(a) => a,
                Err(e) => {
                    print_chain(&e);
                    return ExitCode::from(exit::BACKEND_UNAVAILABLE);
                }
            };
            image::build_default(&agent, refresh, &|m| eprintln!("cordon: {m}")).map(|img| {
                println!("{} {} {}", img.meta.id, img.meta.name, img.dir.display());
            })
        }
        ImageCommand::Ls => image::list().map(|imgs| {
            println!("{:<18} {:<10} {:<28} {:>8}  MODULES", "ID", "NAME", "KERNEL", "SIZE");
            for i in imgs {
                let size: u64 = ["vmlinuz", "initramfs.cpio"]
                    .iter()
                    .filter_map(|f| std::fs::metadata(i.dir.join(f)).ok())
                    .map(|m| m.len())
                    .sum();
                println!(
                    "{:<18} {:<10} {:<28} {:>6}MB  {}",
                    i.meta.id,
                    i.meta.name,
                    i.meta.kernel_release,
                    size >> 20,
                    i.meta.modules.len()
                );
            }
        }),
        ImageCommand::Rm { which } => image::remove(&which).map(|n| println!("removed {n} image(s)")),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            print_chain(&e);
            ExitCode::from(exit::BACKEND_UNAVAILABLE)
        }
    }
}
