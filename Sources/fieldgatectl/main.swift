import ArgumentParser
import FieldgateCtl

await Fieldgatectl.main()
