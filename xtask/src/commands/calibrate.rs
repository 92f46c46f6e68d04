//! `cargo xtask calibrate`: one pod's capacity under the Deployment's limits, in a Docker
//! container (no cluster). The settings (`Args`) are the calibration's own, in the domain.

use xtask::domain::calibrate::*;
use xtask::domain::image;
use xtask::platform::docker;
use xtask::platform::paths::project_root;

pub fn run(args: &Args, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    // A scenario that does not exist is refused before a minute of measuring.
    let scenarios = args
        .scenario
        .as_deref()
        .map(|choice| xtask::domain::scenario::ScenarioFile::select(Some(choice)))
        .transpose()?;
    runtime.block_on(xtask::platform::signals::interruptible(async {
        let docker = docker::connect().await?;
        let calibration = match &args.scenario {
            None => calibrate(&docker, args).await?,
            Some(_) => {
                let limits = limits_for(args)?;
                let image = match &args.image {
                    Some(i) => i.clone(),
                    None => image::build(&docker).await?.reference,
                };
                let dir = project_root().join(args.out_dir());
                match latest(&dir).filter(|c| c.matches(&image, &limits)) {
                    Some(c) => {
                        eprintln!(
                            "using the calibration in {} ({image}, {} CPU)",
                            dir.join("calibration.json").display(),
                            limits.cpus
                        );
                        c
                    }
                    None => {
                        eprintln!("no calibration of {image} under these limits yet: measuring");
                        calibrate(&docker, args).await?
                    }
                }
            }
        };
        if let Some(scenarios) = &scenarios {
            let hpa = predict::app_autoscaling(Target::of_args(args)?.1)?;
            for s in scenarios {
                let p = predict::predict(&calibration, &hpa, s)?;
                print!("\n{}", predict::render(&p));
            }
        }
        anyhow::Ok(())
    }))
}
