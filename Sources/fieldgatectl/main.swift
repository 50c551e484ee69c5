import ArgumentParser
import FieldgateCtl

Fieldgatectl.main()
