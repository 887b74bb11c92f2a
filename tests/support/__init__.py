"""What the tests share: services (MariaDB, moto), the stack on moto, the central server
harness, fakes and emulators of AWS APIs, and the scripts tests run by path. Test modules
import from here, never from one another; bench/ imports it too."""
