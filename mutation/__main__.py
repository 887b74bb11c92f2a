from mutation.mutate import main

raise SystemExit(main())
