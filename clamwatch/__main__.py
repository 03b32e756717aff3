from clamwatch.cli import main

raise SystemExit(main())
