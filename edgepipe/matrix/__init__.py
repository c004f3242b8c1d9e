"""`edgepipe matrix`: every model x target x profile built as Ray tasks, cached by content,
and profiled on a fleet of boards, one job per board at a time."""
