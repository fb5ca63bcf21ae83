<?php
// Counts this process's requests when the benchmark asks: one byte per
// request appended to PHPMEM_COUNT_DIR/<pid> (set in the memory phase's
// site environment only). run.sh installs it in each app.
if ($phpmem_dir = getenv('PHPMEM_COUNT_DIR')) {
    file_put_contents($phpmem_dir . '/' . getmypid(), '.', FILE_APPEND);
}
