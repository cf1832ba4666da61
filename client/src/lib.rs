//! genrep client (loader, augment, model, loss, optim, eval).
