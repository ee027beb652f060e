//! `focal roles`: scores every attention head on previous-token, sink, local, broad and
//! induction behaviour and prints a table with each head's strongest role.

use focal::model::roles::Role;
use focal::Result;

use crate::generate::{load_model, prompt_tokens, PromptArgs};

const DEFAULT_PROMPT: &str = "In 1969, Neil Armstrong walked on the Moon. He said: \"That's one \
small step for man, one giant leap for mankind.\" The mission was called Apollo 11.";

#[derive(clap::Args)]
pub struct RolesArgs {
    #[command(flatten)]
    pub device: crate::DeviceArgs,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// Length of the random token block that is repeated to find induction heads.
    #[arg(long, default_value_t = 24)]
    pub period: usize,
    /// Seed choosing the random tokens.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: &RolesArgs) -> Result<()> {
    let ctx = args.device.context()?;
    let model = load_model(&ctx, args.prompt.model.as_deref())?;
    let tokens = prompt_tokens(&model, &args.prompt, DEFAULT_PROMPT)?;
    let scores = model.score_heads_blocking(&tokens, args.period, args.seed)?;

    println!(
        "{} tokens; induction on a block of {} random tokens repeated twice (seed {})\n",
        tokens.len(),
        args.period,
        args.seed
    );
    println!("| layer | head | role | score | previous | sink | local | broad | induction |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (i, role) in scores.roles().iter().enumerate() {
        let value = |r: Role| scores.scores(r)[i];
        println!(
            "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
            role.layer,
            role.head,
            role.role.name(),
            role.score,
            value(Role::PreviousToken),
            value(Role::Sink),
            value(Role::Local),
            value(Role::Broad),
            value(Role::Induction),
        );
    }
    println!("\nstrongest head per role:");
    for role in Role::ALL {
        let (layer, head, score) = scores.best(role);
        println!(
            "  {:<15} layer {layer:>2} head {head} ({score:.3})",
            role.name()
        );
    }
    Ok(())
}
