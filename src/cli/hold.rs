//! `coffre hold add|release`: legal holds.

use anyhow::Result;

use super::args::HoldCommand;
use super::ctx::{exit, Ctx};
use super::out::outln;
use crate::Coffre;

pub(super) async fn run(app: &Coffre, command: &HoldCommand, ctx: &Ctx) -> Result<u8> {
    let w = &ctx.out;
    {
        {
            let actor = ctx.actor.clone();
            match command {
                HoldCommand::Add { snapshot, purpose } => {
                    crate::ops::lifecycle::shred::hold_add(app, snapshot, &actor, purpose).await?;
                    outln!(w, "snapshot {snapshot} is under legal hold: it will not be shredded until released");
                }
                HoldCommand::Release { snapshot, purpose } => {
                    let k =
                        crate::ops::lifecycle::shred::hold_release(app, snapshot, &actor, purpose)
                            .await?;
                    outln!(
                        w,
                        "hold on snapshot {snapshot} released: its key is back under epoch {}",
                        k.epoch
                    );
                }
            }
            Ok(exit::OK)
        }
    }
}
