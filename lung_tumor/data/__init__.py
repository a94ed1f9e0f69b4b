"""The data layer: the MSD layout, the manifest and folds, verification and synthetic CT."""
