from reconciler.entry.cli import main

raise SystemExit(main())
