from imgcluster.progress import NOT_CACHED, NOT_STORED, skipped_files


def test_skipped_files_counts_unreadable_files_apart_from_features_that_could_not_be_kept():
    """A file whose features the cache cannot hold was read: the warning called it unreadable."""
    unreadable = "cannot identify image file"
    assert skipped_files([unreadable]) == "1 unreadable file"
    assert skipped_files([unreadable, "file name is not valid UTF-8; rename the file"]) == "2 unreadable files"
    assert skipped_files([f"{NOT_CACHED}its features reach 1e+06"]) == "1 file whose features could not be kept"
    assert skipped_files([f"{NOT_STORED}x", f"{NOT_CACHED}y"]) == "2 files whose features could not be kept"
    assert skipped_files([unreadable, unreadable, f"{NOT_CACHED}y"]) == "3 files (2 unreadable, 1 whose features could not be kept)"
