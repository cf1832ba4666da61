//! Steering walks (GenRep's second view method): directions in a generator's latent space
//! learned so that moving along them imitates a pixel edit (zoom, shift, rotation, colour). This
//! holds the edits the walks learn to imitate ([`edits`]) and the loss they are trained with
//! ([`loss`]); training, the walk file and the `steer` view method build on them.

pub mod edits;
pub mod loss;
