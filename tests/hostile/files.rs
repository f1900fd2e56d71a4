//! Special files, hardlinks, names that are not UTF-8 and sparse files in the build context.
